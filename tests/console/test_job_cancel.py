"""Cancelling a job that has not started: by whom, when it is refused, and what it undoes."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.audit.models import AuditEvent
from console.jobs.models import Job
from console.jobs.runner import job_run
from console.jobs.services import job_enqueue
from domains.models import Domain
from hosts.models import Host
from tests.conftest import grant

pytestmark = pytest.mark.django_db


def queued(host: Host, user: Any, kind: str = "domain.start") -> Job:
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF)
    return job_enqueue(kind=kind, actor=user, host=host, domain=domain)


def test_cancel_a_queued_job_and_the_worker_then_skips_it(api: APIClient, host: Host, user: Any) -> None:
    job = queued(host, user)
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled" and response.json()["step"] == "Cancelled by ana"
    job_run(job.pk)  # the message reaches a worker anyway
    job.refresh_from_db()
    assert job.status == "cancelled" and job.attempts == 0 and job.started_at is None
    assert AuditEvent.objects.filter(action="job.cancel").count() == 1


def test_a_running_or_finished_job_cannot_be_cancelled(api: APIClient, host: Host, user: Any) -> None:
    job = queued(host, user)
    for status in ("running", "succeeded"):
        Job.objects.filter(pk=job.pk).update(status=status)
        response = api.post(f"/api/v1/jobs/{job.pk}/cancel/")
        assert response.status_code == 409 and f"is {status}" in response.json()["detail"]


def test_cancelling_a_create_forgets_the_domain_that_was_never_defined(
    api: APIClient, host: Host, user: Any
) -> None:
    body = {"name": "never", "host": host.pk, "boot": {"iso": "/var/lib/libvirt/images/x.iso"}}
    created = api.post("/api/v1/domains/", body, format="json").json()
    assert api.post(f"/api/v1/jobs/{created['job']['id']}/cancel/").status_code == 200
    assert not Domain.objects.filter(name="never").exists()


def test_others_need_the_jobs_permission(host: Host, user: Any, django_user_model: Any) -> None:
    job = queued(host, user)
    viewer = django_user_model.objects.create_user("vi", password="pw-vi-123456")
    grant(viewer, "Viewer")
    operator = django_user_model.objects.create_user("op", password="pw-op-123456")
    grant(operator, "Operator")
    for who, status in ((viewer, 403), (operator, 200)):
        client = APIClient()
        client.force_authenticate(who)
        assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == status


def test_jobs_filter_by_domain_host_actor_and_status(api: APIClient, host: Host, user: Any) -> None:
    other_host = Host.objects.create(name="h2", url="http://127.0.0.1:2", secret="y" * 32)
    a = Domain.objects.create(name="a", host=host, state=Domain.State.SHUTOFF)
    b = Domain.objects.create(name="b", host=other_host, state=Domain.State.SHUTOFF)
    job_a = job_enqueue(kind="domain.start", actor=user, host=host, domain=a)
    job_b = job_enqueue(kind="domain.start", actor=None, host=other_host, domain=b)
    Job.objects.filter(pk=job_b.pk).update(status="failed")

    def ids(query: str) -> set[int]:
        response = api.get(f"/api/v1/jobs/?{query}")
        assert response.status_code == 200, response.content
        return {job["id"] for job in response.json()["results"]}

    assert ids(f"domain={a.pk}") == {job_a.pk}
    assert ids(f"host={other_host.pk}") == {job_b.pk}
    assert ids("actor=ana") == {job_a.pk}
    assert ids("status=failed") == {job_b.pk}
    assert ids(f"status=queued&host={host.pk}") == {job_a.pk}
    bad = api.get("/api/v1/jobs/?status=done")
    assert bad.status_code == 400 and "status" in bad.json()["fields"]
    assert api.get("/api/v1/jobs/?domain=x").status_code == 400
