"""Queued jobs are bounded (issue 18, point 7): a fuzzing run once queued ~1,200 power jobs on
one domain in 2 minutes, which then blocked it. An identical power action to the last one still
waiting is that job; past a domain's or a user's limit, a 429 with Retry-After. No worker runs
here, so every job stays queued."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.audit.models import AuditEvent
from console.jobs.models import Job
from domains.models import Domain
from hosts.models import Host

pytestmark = pytest.mark.django_db


@pytest.fixture
def domains(host: Host) -> list[Domain]:
    return [Domain.objects.create(name=f"d{i}", host=host, state=Domain.State.SHUTOFF) for i in range(3)]


def test_the_same_action_as_the_last_waiting_one_is_that_job(api: APIClient, domains: list[Domain]) -> None:
    domain = domains[0]
    first = api.post(f"/api/v1/domains/{domain.pk}/start/")
    assert first.status_code == 202
    again = [api.post(f"/api/v1/domains/{domain.pk}/start/") for _ in range(5)]
    assert {r.status_code for r in again} == {202}
    assert {r.json()["job"]["id"] for r in again} == {first.json()["job"]["id"]}
    assert Job.objects.filter(domain=domain).count() == 1
    coalesced = AuditEvent.objects.filter(action="domain.start", changes__coalesced=True)
    assert coalesced.count() == 5  # each request is still on the trail


def test_only_the_last_waiting_action_absorbs_one(api: APIClient, domains: list[Domain]) -> None:
    """start, shutdown, start must end started: the second start is a job of its own."""
    domain = domains[0]
    kinds = ["start", "shutdown", "start", "start"]
    ids = [api.post(f"/api/v1/domains/{domain.pk}/{kind}/").json()["job"]["id"] for kind in kinds]
    assert len(set(ids)) == 3 and ids[2] == ids[3]
    assert list(Job.objects.filter(domain=domain).order_by("pk").values_list("kind", flat=True)) == [
        "domain.start",
        "domain.shutdown",
        "domain.start",
    ]


def test_a_domain_with_its_limit_of_jobs_waiting_refuses_more(
    api: APIClient, domains: list[Domain], settings: Any
) -> None:
    settings.DOMUS_JOBS_QUEUED_PER_DOMAIN = 4
    domain, other = domains[0], domains[1]
    for kind in ["start", "pause", "resume", "shutdown"]:
        assert api.post(f"/api/v1/domains/{domain.pk}/{kind}/").status_code == 202
    refused = api.post(f"/api/v1/domains/{domain.pk}/start/")
    assert refused.status_code == 429
    assert refused["Retry-After"] == "10"
    assert refused.json() == {
        "error": "too_busy",
        "detail": "d0 already has 4 jobs waiting; try again when they have run.",
    }
    assert Job.objects.filter(domain=domain).count() == 4  # nothing of it left behind
    assert api.post(f"/api/v1/domains/{other.pk}/start/").status_code == 202  # another domain

    Job.objects.filter(domain=domain).update(status=Job.Status.SUCCEEDED)  # they ran
    assert api.post(f"/api/v1/domains/{domain.pk}/start/").status_code == 202


def test_a_user_with_their_limit_of_jobs_waiting_is_refused_more(
    api: APIClient, domains: list[Domain], settings: Any, django_user_model: Any
) -> None:
    settings.DOMUS_JOBS_QUEUED_PER_USER = 3
    for domain in domains:
        assert api.post(f"/api/v1/domains/{domain.pk}/start/").status_code == 202
    fourth = Domain.objects.create(name="d3", host=domains[0].host, state=Domain.State.SHUTOFF)
    refused = api.post(f"/api/v1/domains/{fourth.pk}/start/")
    assert refused.status_code == 429 and refused["Retry-After"] == "10"
    assert "You already have 3 jobs waiting" in refused.json()["detail"]
    assert not Job.objects.filter(domain=fourth).exists()

    from console.access.services import api_token_issue
    from tests.conftest import grant

    colleague = django_user_model.objects.create_user("bo", password="b-pass-1234")
    grant(colleague, "Owner")
    _token, key = api_token_issue(user=colleague)
    theirs = APIClient()
    theirs.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert theirs.post(f"/api/v1/domains/{fourth.pk}/start/").status_code == 202  # their own count
