"""Leases on running jobs, and the sweeper that retries the jobs of lost workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from console.audit.models import AuditEvent
from console.jobs import services
from console.jobs.leases import jobs_sweep
from console.jobs.models import Job
from console.jobs.runner import HANDLERS, JobContext, job_handler, job_run
from console.jobs.services import job_recover

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The job ids sent to the queue (instead of sending them)."""
    from console.jobs.tasks import run_job

    ids: list[int] = []
    monkeypatch.setattr(run_job, "apply_async", lambda args, **options: ids.append(args[0]))
    return ids


@pytest.fixture
def commit(django_capture_on_commit_callbacks: Any) -> Iterator[Callable[[Callable[[], Any]], Any]]:
    """Run `fn` and then what it left for after the commit (a requeue sends its message then)."""

    def run(fn: Callable[[], Any]) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return fn()

    yield run


def running(*, attempts: int = 1, lease: datetime | None, **fields: Any) -> Job:
    return Job.objects.create(
        kind="domain.start",
        status=Job.Status.RUNNING,
        attempts=attempts,
        lease_expires_at=lease,
        started_at=timezone.now() - timedelta(minutes=1),
        target_name="web",
        **fields,
    )


def ago(seconds: float) -> datetime:
    return timezone.now() - timedelta(seconds=seconds)


def test_a_running_job_whose_lease_lapsed_is_queued_again(sent: list[int], commit: Any) -> None:
    job = running(lease=ago(1))
    assert commit(jobs_sweep) == 1
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and job.attempts == 1
    assert "Worker lost; retrying (attempt 2 of 3)" in job.log and job.step.startswith("Worker lost")
    assert sent == [job.pk]
    assert job.lease_expires_at is not None and job.lease_expires_at > timezone.now()  # resend deadline


def test_a_running_job_with_a_live_lease_is_left_alone(sent: list[int], commit: Any) -> None:
    job = running(lease=timezone.now() + timedelta(seconds=20))
    assert commit(jobs_sweep) == 0
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and sent == []


def test_a_running_job_from_before_leases_counts_as_lapsed(sent: list[int], commit: Any) -> None:
    job = running(lease=None)
    commit(jobs_sweep)
    assert sent == [job.pk]


def test_two_sweepers_finding_the_same_job_requeue_it_once(sent: list[int], commit: Any) -> None:
    job = running(lease=ago(1))
    seen_by_a, seen_by_b = Job.objects.get(pk=job.pk), Job.objects.get(pk=job.pk)  # both read it
    assert commit(lambda: job_recover(job=seen_by_a)) is True
    assert commit(lambda: job_recover(job=seen_by_b)) is False
    job.refresh_from_db()
    assert sent == [job.pk] and job.log.count("Worker lost") == 1


def test_a_renewal_after_the_read_wins_over_the_sweeper(sent: list[int], commit: Any) -> None:
    """The worker was slow, not dead: it renewed between the sweeper's read and its update."""
    job = running(lease=ago(1))
    seen = Job.objects.get(pk=job.pk)
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=30))
    assert commit(lambda: job_recover(job=seen)) is False
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and sent == []


def test_retries_stop_after_the_last_attempt(sent: list[int], commit: Any) -> None:
    job = running(attempts=3, lease=ago(1))
    commit(jobs_sweep)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and sent == []
    assert "lost 3 times" in job.error and "Check web's state" in job.error
    assert AuditEvent.objects.filter(action="job.finished", object_id=str(job.pk), outcome="failed").exists()


def test_a_lost_job_someone_cancelled_ends_cancelled(sent: list[int], commit: Any) -> None:
    job = running(lease=ago(1), cancel_requested=True)
    commit(jobs_sweep)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and sent == [] and "worker running it was lost" in job.step


def test_a_queued_job_no_worker_took_is_sent_again_once(sent: list[int], commit: Any, settings: Any) -> None:
    settings.DOMUS_JOB_QUEUED_RESEND_SECONDS = 300
    fresh = Job.objects.create(kind="domain.start", lease_expires_at=timezone.now() + timedelta(seconds=300))
    lost = Job.objects.create(kind="domain.start", lease_expires_at=ago(1))
    legacy = Job.objects.create(kind="domain.start")  # no deadline: its age decides
    Job.objects.filter(pk=legacy.pk).update(created_at=ago(301))
    commit(jobs_sweep)
    assert sorted(sent) == sorted([lost.pk, legacy.pk])
    commit(jobs_sweep)  # the next pass: the deadline moved on, so nothing is sent twice
    assert len(sent) == 2
    lost.refresh_from_db()
    fresh.refresh_from_db()
    assert "sent it to the queue again" in lost.log and lost.status == Job.Status.QUEUED
    assert fresh.log == ""


@pytest.mark.django_db(transaction=True)
def test_the_lease_is_renewed_while_the_handler_runs(settings: Any) -> None:
    """The keeper thread renews it (its own connection: hence a transactional test)."""
    settings.DOMUS_JOB_LEASE_SECONDS = 1.0
    settings.DOMUS_JOB_LEASE_RENEW_SECONDS = 0.2
    leases: list[datetime | None] = []

    @job_handler("test.long")
    def long(ctx: JobContext) -> None:
        # Wait for the keeper to move the lease on, three times (not for a number of seconds).
        for _ in range(3):
            before = Job.objects.get(pk=ctx.job.pk).lease_expires_at
            deadline = time.monotonic() + 30
            while Job.objects.get(pk=ctx.job.pk).lease_expires_at == before and time.monotonic() < deadline:
                time.sleep(0.05)
            leases.append(Job.objects.get(pk=ctx.job.pk).lease_expires_at)

    try:
        job = Job.objects.create(kind="test.long")
        job_run(job.pk)
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED and job.lease_expires_at is None
        assert all(lease is not None for lease in leases)
        assert leases == sorted(leases) and len(set(leases)) == 3  # moved on each time
        # Never lapsed while it ran: the sweeper had no reason to take it.
        assert services.lapsed_running(timezone.now()).count() == 0
    finally:
        HANDLERS.pop("test.long")


@pytest.mark.django_db(transaction=True)
def test_an_attempt_taken_over_records_nothing(settings: Any) -> None:
    """A stalled attempt whose job was retried meanwhile: its handler is told to stop, and its
    outcome is not written over the new attempt's."""
    settings.DOMUS_JOB_LEASE_RENEW_SECONDS = 0.1
    stop_seen = threading.Event()

    @job_handler("test.stalled")
    def stalled(ctx: JobContext) -> dict[str, str]:
        # Meanwhile a sweeper decided this attempt was lost, and attempt 2 started.
        Job.objects.filter(pk=ctx.job.pk).update(attempts=2, log="")
        deadline = time.monotonic() + 5
        while not ctx.cancel_requested() and time.monotonic() < deadline:
            time.sleep(0.05)
        if ctx.cancel_requested():
            stop_seen.set()
        return {"from": "attempt 1"}

    try:
        job = Job.objects.create(kind="test.stalled")
        job_run(job.pk)
        job.refresh_from_db()
        assert stop_seen.is_set()
        assert job.status == Job.Status.RUNNING and job.attempts == 2 and job.result == {}
    finally:
        HANDLERS.pop("test.stalled")
