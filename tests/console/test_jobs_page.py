"""The jobs page (/jobs/): what each user sees, the filters, pagination, Cancel buttons."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from console.jobs.models import Job
from console.jobs.runner import CANCELLABLE
from domains.models import Domain
from hosts.models import Host
from tests.conftest import grant

pytestmark = pytest.mark.django_db


def shown(response: Any) -> list[int]:
    assert response.status_code == 200, response.content[:500]
    return [int(pk) for pk in re.findall(r'<tr data-job="(\d+)"', response.content.decode())]


@pytest.fixture
def fleet(host: Host, user: Any, django_user_model: Any) -> dict[str, Any]:
    other_host = Host.objects.create(name="h2", url="http://127.0.0.1:2", secret="y" * 32)
    a = Domain.objects.create(name="alpha", host=host)
    b = Domain.objects.create(name="bravo", host=other_host)
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123456")
    return {
        "a": a,
        "b": b,
        "h2": other_host,
        "bob": bob,
        "a_by_ana": Job.objects.create(
            kind="domain.start", domain=a, host=host, actor=user, target_name="alpha"
        ),
        "a_failed": Job.objects.create(
            kind="domain.reboot", domain=a, host=host, actor=bob, status="failed", target_name="alpha"
        ),
        "b_by_bob": Job.objects.create(
            kind="domain.start", domain=b, host=other_host, actor=bob, status="succeeded", target_name="bravo"
        ),
    }


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_page_lists_jobs_newest_first_and_the_nav_links_it(user: Any, fleet: dict[str, Any]) -> None:
    response = signed_in(user).get("/jobs/")
    assert shown(response) == [fleet["b_by_bob"].pk, fleet["a_failed"].pk, fleet["a_by_ana"].pk]
    page = response.content.decode()
    assert '<a href="/jobs/">Jobs</a>' in page


def test_filters_by_domain_host_user_and_status(user: Any, fleet: dict[str, Any]) -> None:
    client = signed_in(user)
    a, b = fleet["a"], fleet["b"]
    assert shown(client.get("/jobs/", {"domain": a.pk})) == [fleet["a_failed"].pk, fleet["a_by_ana"].pk]
    assert shown(client.get("/jobs/", {"host": fleet["h2"].pk})) == [fleet["b_by_bob"].pk]
    assert shown(client.get("/jobs/", {"actor": "bob"})) == [fleet["b_by_bob"].pk, fleet["a_failed"].pk]
    assert shown(client.get("/jobs/", {"status": "failed"})) == [fleet["a_failed"].pk]
    assert shown(client.get("/jobs/", {"actor": "bob", "domain": a.pk})) == [fleet["a_failed"].pk]
    assert shown(client.get("/jobs/", {"domain": b.pk, "status": "queued"})) == []


def test_a_bad_filter_is_named_and_ignored(user: Any, fleet: dict[str, Any]) -> None:
    response = signed_in(user).get("/jobs/", {"status": "done", "domain": "x"})
    assert len(shown(response)) == 3
    page = response.content.decode()
    assert (
        'id="job-filter-errors"' in page and "<code>status</code>" in page and "<code>domain</code>" in page
    )


def test_a_user_sees_only_jobs_on_domains_they_may_view(fleet: dict[str, Any]) -> None:
    bob, a = fleet["bob"], fleet["a"]
    grant(bob, "Viewer", a)
    client = signed_in(bob)
    assert shown(client.get("/jobs/")) == [fleet["a_failed"].pk, fleet["a_by_ana"].pk]
    # His own job on bravo, which he may no longer see, is not shown, even when asked for.
    assert shown(client.get("/jobs/", {"domain": fleet["b"].pk})) == []
    assert shown(client.get("/jobs/", {"actor": "bob"})) == [fleet["a_failed"].pk]
    page = client.get("/jobs/").content.decode()
    assert "bravo" not in page and ">h2<" not in page  # not even among the filter choices
    assert 'value="alpha"' not in page and f'<option value="{a.pk}">alpha</option>' in page


def test_someone_without_grants_sees_no_jobs(django_user_model: Any, fleet: dict[str, Any]) -> None:
    nobody = django_user_model.objects.create_user("nobody", password="pw-nobody-123")
    response = signed_in(nobody).get("/jobs/")
    assert shown(response) == [] and "No jobs" in response.content.decode()


def test_the_page_needs_a_sign_in() -> None:
    response = Client().get("/jobs/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_fifty_jobs_a_page(user: Any, host: Host) -> None:
    Job.objects.bulk_create(Job(kind="host.refresh", host=host, target_name="h1") for _ in range(60))
    client = signed_in(user)
    first, second = shown(client.get("/jobs/")), shown(client.get("/jobs/", {"page": 2}))
    assert len(first) == 50 and len(second) == 10
    assert first == sorted(first, reverse=True) and max(second) < min(first)
    page = client.get("/jobs/", {"status": "queued"}).content.decode()
    assert 'href="?status=queued&amp;page=2"' in page  # the filters carry over to the next page


def test_cancel_buttons_where_cancelling_can_work(user: Any, host: Host) -> None:
    queued = Job.objects.create(kind="domain.start", host=host)
    running = Job.objects.create(kind="domain.start", host=host, status="running")
    stoppable = Job.objects.create(kind="domain.shutdown", host=host, status="running")
    stoppable_later = Job.objects.create(kind="domain.shutdown", host=host)
    asked = Job.objects.create(kind="domain.shutdown", host=host, status="running", cancel_requested=True)
    done = Job.objects.create(kind="domain.start", host=host, status="succeeded")
    assert "domain.shutdown" in CANCELLABLE
    page = signed_in(user).get("/jobs/").content.decode()
    buttons = {int(pk) for pk in re.findall(r'data-cancel="(\d+)"', page)}
    assert buttons == {queued.pk, stoppable.pk, stoppable_later.pk}
    # Every row has the cell live.js keeps in step with the `cancellable` its job's events carry.
    for job in (queued, running, stoppable, stoppable_later, asked, done):
        assert f'<tr data-job="{job.pk}">' in page
    assert page.count('<td data-field="cancel">') == 6
