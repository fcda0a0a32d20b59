from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings

from console.jobs.models import Job
from console.jobs.runner import (
    HANDLERS,
    DomainBusy,
    JobContext,
    JobFailed,
    domain_lock_key,
    job_handler,
    job_run,
)
from domains.models import Domain
from hosts.models import Host
from tests.conftest import grant

pytestmark = pytest.mark.django_db


@pytest.fixture
def handlers() -> Iterator[dict[str, int]]:
    calls = {"ok": 0}

    @job_handler("test.ok")
    def ok(ctx: JobContext) -> dict[str, str]:
        calls["ok"] += 1
        ctx.progress(50, "Half way")
        ctx.log("a detail")
        return {"answer": "42"}

    @job_handler("test.refused")
    def refused(ctx: JobContext) -> None:
        raise JobFailed("The guest ignored it; use Force off.")

    @job_handler("test.crash")
    def crash(ctx: JobContext) -> None:
        raise KeyError("bug")

    yield calls
    for kind in ("test.ok", "test.refused", "test.crash"):
        HANDLERS.pop(kind)


def make(kind: str, domain: Domain | None = None) -> Job:
    return Job.objects.create(kind=kind, domain=domain, host=domain.host if domain else None)


def test_success_records_progress_log_and_result(handlers: dict[str, int]) -> None:
    job = make("test.ok")
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.progress == 100
    assert job.result == {"answer": "42"}
    assert "Half way" in job.log and "a detail" in job.log
    assert job.started_at is not None and job.finished_at is not None


def test_failure_message_is_for_a_person(handlers: dict[str, int]) -> None:
    job = make("test.refused")
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "The guest ignored it; use Force off."


def test_a_crash_ends_failed_not_stuck_running(handlers: dict[str, int]) -> None:
    job = make("test.crash")
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "KeyError" in job.error


def test_unknown_kind_fails_clearly() -> None:
    job = make("test.nobody-handles-this")
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "No handler" in job.error


def test_redelivered_finished_job_is_not_run_again(handlers: dict[str, int]) -> None:
    job = make("test.ok")
    job_run(job.pk)
    job_run(job.pk)
    assert handlers["ok"] == 1


def test_one_job_at_a_time_per_domain(handlers: dict[str, int], host: Host) -> None:
    domain = Domain.objects.create(name="d", host=host)
    held = redis.Redis.from_url(settings.REDIS_URL).lock(domain_lock_key(domain.pk), timeout=30)
    assert held.acquire(blocking=False)
    try:
        job = make("test.ok", domain)
        with pytest.raises(DomainBusy):
            job_run(job.pk)
        job.refresh_from_db()
        assert job.status == Job.Status.QUEUED
        assert "another job" in job.step
    finally:
        held.release()
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_a_redelivered_job_takes_back_its_own_lock(handlers: dict[str, int], host: Host) -> None:
    """Its worker died holding the domain's lock: the retry must not wait for it to expire."""
    domain = Domain.objects.create(name="d", host=host)
    job = make("test.ok", domain)
    stale = redis.Redis.from_url(settings.REDIS_URL).lock(domain_lock_key(domain.pk), timeout=600)
    assert stale.acquire(blocking=False, token=str(job.pk))
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert redis.Redis.from_url(settings.REDIS_URL).get(domain_lock_key(domain.pk)) is None  # released


def test_a_job_whose_actor_lost_the_permission_does_not_run(
    handlers: dict[str, int], host: Host, django_user_model: Any
) -> None:
    from console.jobs.runner import REQUIRED

    REQUIRED["test.ok"] = "domain.power"
    try:
        bob = django_user_model.objects.create_user("bob", password="x-pass-1234")
        domain = Domain.objects.create(name="d", host=host)
        g = grant(bob, "Operator", domain)
        job = Job.objects.create(kind="test.ok", domain=domain, host=host, actor=bob)
        g.delete()  # withdrawn while the job waited in the queue
        job_run(job.pk)
        job.refresh_from_db()
        assert job.status == Job.Status.FAILED
        assert "domain.power" in job.error and "withdrawn" in job.error
        assert handlers["ok"] == 0
    finally:
        REQUIRED.pop("test.ok")


def test_finished_jobs_are_audited(handlers: dict[str, int]) -> None:
    from console.audit.models import AuditEvent

    ok, refused = make("test.ok"), make("test.refused")
    job_run(ok.pk)
    job_run(refused.pk)
    outcomes = dict(AuditEvent.objects.filter(action="job.finished").values_list("object_id", "outcome"))
    assert outcomes == {str(ok.pk): "success", str(refused.pk): "failed"}
