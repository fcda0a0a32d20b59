from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connections
from django.utils import timezone

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


def job_run_in_thread(job_id: int) -> None:
    """job_run as a second worker would: in its own thread, with its own connection."""
    try:
        job_run(job_id)
    finally:
        connections.close_all()


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


def lock_holder(domain: Domain) -> bytes | None:
    value: bytes | None = redis.Redis.from_url(settings.REDIS_URL).get(domain_lock_key(domain.pk))
    return value


def test_a_retried_job_takes_over_the_lock_of_its_lost_attempt(handlers: dict[str, int], host: Host) -> None:
    """Attempt 1's worker died holding the domain's lock, and its lease lapsed: the retry must
    not wait for the lock to expire."""
    domain = Domain.objects.create(name="d", host=host)
    job = make("test.ok", domain)
    lapsed = timezone.now() - timedelta(seconds=1)
    Job.objects.filter(pk=job.pk).update(status="running", attempts=1, lease_expires_at=lapsed)
    stale = redis.Redis.from_url(settings.REDIS_URL).lock(domain_lock_key(domain.pk), timeout=600)
    assert stale.acquire(blocking=False, token=f"job:{job.pk}:1")
    job_run(job.pk)  # the broker's redelivery, before any sweeper noticed
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.attempts == 2 and handlers["ok"] == 1
    assert "Worker lost; retrying (attempt 2 of 3)" in job.log
    assert lock_holder(domain) is None  # released


def test_a_duplicate_delivery_of_a_running_job_does_nothing(handlers: dict[str, int], host: Host) -> None:
    """The same job delivered again while its attempt runs (lease live): not run a second time,
    and the running attempt keeps the domain's lock."""
    domain = Domain.objects.create(name="d", host=host)
    job = make("test.ok", domain)
    live = timezone.now() + timedelta(seconds=30)
    Job.objects.filter(pk=job.pk).update(status="running", attempts=1, lease_expires_at=live)
    holder = redis.Redis.from_url(settings.REDIS_URL).lock(domain_lock_key(domain.pk), timeout=30)
    assert holder.acquire(blocking=False, token=f"job:{job.pk}:1")
    try:
        job_run(job.pk)
        job.refresh_from_db()
        assert handlers["ok"] == 0 and job.status == Job.Status.RUNNING and job.attempts == 1
        assert lock_holder(domain) == f"job:{job.pk}:1".encode()
    finally:
        holder.release()


def test_a_lock_left_by_another_job_is_not_taken(handlers: dict[str, int], host: Host) -> None:
    domain = Domain.objects.create(name="d", host=host)
    job = make("test.ok", domain)
    other = redis.Redis.from_url(settings.REDIS_URL).lock(domain_lock_key(domain.pk), timeout=30)
    assert other.acquire(blocking=False, token=f"job:{job.pk + 1}:1")
    try:
        with pytest.raises(DomainBusy):
            job_run(job.pk)
        job.refresh_from_db()
        assert job.status == Job.Status.QUEUED and job.attempts == 0 and job.started_at is None
    finally:
        other.release()


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_at_once_run_the_job_once(host: Host) -> None:
    """Two workers get the same job at the same moment (a duplicate message): one runs it; the
    other neither runs it nor releases the lock the first holds."""
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    @job_handler("test.slow")
    def slow(ctx: JobContext) -> None:
        calls.append(ctx.job.attempts)
        entered.set()
        assert release.wait(10)

    try:
        domain = Domain.objects.create(name="d", host=host)
        job = make("test.slow", domain)
        first = threading.Thread(target=job_run_in_thread, args=(job.pk,))
        first.start()
        assert entered.wait(10)
        job_run(job.pk)  # the duplicate
        assert lock_holder(domain) == f"job:{job.pk}:1".encode()
        release.set()
        first.join(10)
        job.refresh_from_db()
        assert calls == [1] and job.status == Job.Status.SUCCEEDED and job.attempts == 1
        assert lock_holder(domain) is None
    finally:
        release.set()
        HANDLERS.pop("test.slow")


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
