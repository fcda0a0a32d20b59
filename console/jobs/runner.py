"""Runs one job: finds its handler, serialises it per domain, records progress, log and outcome.

Handlers are registered by the apps that own the work (`domains/jobs.py`) with `@job_handler`.
A handler raises `JobFailed` with a message written for a person (agent errors are reported
with the agent's own detail), or `JobCancelled` when it stopped because `ctx.cancel_requested()`.

A delivery starts the job only by claiming it (queued -> running, one more attempt, a lease) in
one conditional UPDATE, so a duplicate delivery of the same job never runs it a second time
while it runs. While the handler runs, a `LeaseKeeper` thread renews the lease; when the worker
dies the lease lapses and a sweeper (console/jobs/leases.py) queues the job again. The retry
re-runs the handler from the start: agent operations carry the job's id as an idempotency key,
so the agent answers a repeated one from memory instead of doing it again.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connections
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from redis.exceptions import LockError
from redis.lock import Lock

from agent.client import AgentError, is_transient
from console.access.policy import explain, has_perm
from console.jobs.events import job_event
from console.jobs.models import Job
from console.jobs.registry import (
    CANCELLABLE,
    HANDLERS,
    REQUIRED,
    VERIFY,
    AttemptLost,
    Handler,
    JobCancelled,
    JobFailed,
    job_handler,
)
from console.jobs.services import job_finish, job_recover, log_append, log_line, resend_deadline
from console.realtime.events import publish

__all__ = [
    "CANCELLABLE",
    "HANDLERS",
    "REQUIRED",
    "AttemptLost",
    "DomainBusy",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "domain_lock_key",
    "job_handler",
    "job_run",
]

logger = logging.getLogger(__name__)

WAITING_FOR_DOMAIN = "Waiting for another job on this domain"


class DomainBusy(Exception):
    """Another job holds the domain; the task retries later."""


class LeaseKeeper:
    """A thread that keeps one attempt of a job alive while its handler runs: it renews the
    job's lease (and the domain lock) every DOMUS_JOB_LEASE_RENEW_SECONDS, and for cancellable
    kinds watches for a cancel request. It has its own database connection (Django's are per
    thread) and closes it when it stops."""

    def __init__(self, job: Job, *, lock: Lock | None, watch_cancel: bool) -> None:
        self.job_id = job.pk
        self.attempt = job.attempts
        self.lock = lock
        self.watch_cancel = watch_cancel
        self.domain_id = job.domain_id
        self.cancelled = threading.Event()
        self.lost = threading.Event()  # another attempt owns the job now: stop at a safe point
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"job-{job.pk}-lease", daemon=True)
        if watch_cancel and job.cancel_requested:  # cancelled while it waited for its domain
            self.cancelled.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        renew_every = settings.DOMUS_JOB_LEASE_RENEW_SECONDS
        tick = min(renew_every, settings.DOMUS_JOB_CANCEL_CHECK_SECONDS) if self.watch_cancel else renew_every
        next_renewal = time.monotonic() + renew_every
        try:
            while not self._stop.wait(tick):
                try:
                    if time.monotonic() >= next_renewal:
                        self.renew()
                        next_renewal = time.monotonic() + renew_every
                    if self.watch_cancel and not self.cancelled.is_set():
                        if Job.objects.filter(pk=self.job_id, cancel_requested=True).exists():
                            self.cancelled.set()
                except DatabaseError as exc:  # the database is away for a moment: try again next tick
                    logger.warning("job %s: cannot renew its lease: %s", self.job_id, exc)
                    connections.close_all()
                except redis.RedisError as exc:  # so is Redis: the thread must live on regardless
                    logger.warning("job %s: cannot renew its domain lock: %s", self.job_id, exc)
        finally:
            connections.close_all()  # this thread's connections only

    def renew(self) -> None:
        expires = timezone.now() + timedelta(seconds=settings.DOMUS_JOB_LEASE_SECONDS)
        renewed = Job.objects.filter(pk=self.job_id, status=Job.Status.RUNNING, attempts=self.attempt).update(
            lease_expires_at=expires
        )
        if not renewed and not self.lost.is_set():
            logger.warning(
                "job %s attempt %s lost its lease: another attempt owns it", self.job_id, self.attempt
            )
            self.lost.set()
        if self.lock is not None:
            try:
                self.lock.reacquire()
            except LockError:
                # It lapsed (Redis was away longer than a lease): take it again unless another
                # job has it now, in which case this attempt must not go on alongside it.
                assert self.domain_id is not None
                if _take_domain_lock(self.domain_id, self.job_id, self.attempt):
                    logger.warning("job %s: the domain lock lapsed and was taken again", self.job_id)
                else:
                    logger.warning("job %s: another job took its domain lock; stopping", self.job_id)
                    self.lost.set()


class JobContext:
    def __init__(self, job: Job, keeper: LeaseKeeper | None = None) -> None:
        self.job = job
        self._keeper = keeper

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.job.params)

    def cancel_requested(self) -> bool:
        """Whether the handler should stop at this safe point: someone cancelled the job (kinds
        registered with cancellable=True only), or another attempt took it over. Cheap and safe
        to call from async code: it reads a flag the lease keeper sets."""
        keeper = self._keeper
        return keeper is not None and (keeper.cancelled.is_set() or keeper.lost.is_set())

    def progress(self, percent: int, step: str) -> None:
        self.job.progress = max(0, min(100, percent))
        self.job.step = step
        self._save(step, progress=self.job.progress, step=step)

    def log(self, line: str) -> None:
        self._save(line)

    def _save(self, line: str, **fields: Any) -> None:
        text = log_line(line)
        self.job.log += text
        # Only while the job is this attempt's (or, before it started, still queued).
        if self.job.status == Job.Status.RUNNING:
            owner = Q(status=Job.Status.RUNNING, attempts=self.job.attempts)
        else:
            owner = Q(status=Job.Status.QUEUED)
        # A stalled attempt that lost the job writes nothing, and shows nothing either.
        if Job.objects.filter(owner, pk=self.job.pk).update(**fields, log=log_append(text)):
            publish(job_event(self.job))

    def ensure_owned(self) -> None:
        """Stop here (before another agent call) if another attempt has taken the job over."""
        if self._keeper is not None and self._keeper.lost.is_set():
            raise AttemptLost(self.job.pk)

    @property
    def deadline(self) -> datetime:
        """Until when the job may wait out transient faults (an unreachable agent), counted from
        its creation: the person who asked expects an outcome by then."""
        return self.job.created_at + timedelta(seconds=settings.DOMUS_JOB_DEADLINE_SECONDS)

    def seconds_left(self) -> float:
        return (self.deadline - timezone.now()).total_seconds()

    def sleep(self, seconds: float) -> None:
        """Wait, but return early when the job is cancelled, and stop (AttemptLost) when another
        attempt has taken it over."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            self.ensure_owned()
            if self.cancel_requested():
                return
            time.sleep(min(0.5, left))
        self.ensure_owned()


def domain_lock_key(domain_id: int) -> str:
    return f"{settings.DOMUS_REDIS_PREFIX}:lock:domain:{domain_id}"


@functools.cache
def _redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)  # one connection pool per process, not one per call


def _redis() -> redis.Redis:
    return _redis_for(settings.REDIS_URL)


def _take_domain_lock(domain_id: int, job_id: int, attempt: int) -> bool:
    lease_ms = int(settings.DOMUS_JOB_LEASE_SECONDS * 1000)
    args: list[str | int] = [f"job:{job_id}:{attempt}", f"job:{job_id}:", lease_ms]
    return bool(_redis().register_script(_ACQUIRE)(keys=[domain_lock_key(domain_id)], args=args))


# Take the lock when it is free, already this attempt's (ARGV[1]), or left by an earlier attempt
# of the same job (ARGV[2] is the job's prefix, "job:<id>:"); never from another job.
_ACQUIRE = """
local held = redis.call('get', KEYS[1])
if held and held ~= ARGV[1] and string.sub(held, 1, string.len(ARGV[2])) ~= ARGV[2] then
  return 0
end
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[3])
return 1
"""


def _domain_lock(job: Job) -> Lock | None:
    """The domain's lock, held for this attempt of the job; None while another job holds it.

    The lock's value names the job and the attempt. An earlier attempt of the same job can only
    still hold it if its worker died: this attempt exists because that one's lease lapsed (the
    caller has claimed the job), so it takes the lock over instead of waiting for it to expire.
    The lock lasts one lease and the lease keeper renews it, so a dead worker's lock frees itself.
    """
    assert job.domain_id is not None
    key = domain_lock_key(job.domain_id)
    token = f"job:{job.pk}:{job.attempts}"
    client = _redis()
    if not _take_domain_lock(job.domain_id, job.pk, job.attempts):
        return None
    # Not thread-local: the lease keeper's thread renews it.
    lock: Lock = client.lock(key, timeout=settings.DOMUS_JOB_LEASE_SECONDS, thread_local=False)
    lock.local.token = token.encode()
    return lock


def job_run(job_id: int) -> None:
    job = Job.objects.select_related("host", "domain", "actor").filter(pk=job_id).first()
    if job is None or job.is_finished:
        return  # deleted, or a redelivery of a job that already finished
    if job.status == Job.Status.RUNNING:
        lease = job.lease_expires_at
        if lease is not None and lease > timezone.now():
            logger.info("job %s is running under a live lease; duplicate delivery dropped", job.pk)
            return
        # Its worker died and no sweeper has noticed yet: recover it here and run it now.
        if not job_recover(job=job, resend=False):
            return
    handler = HANDLERS.get(job.kind)
    queued = Q(status=Job.Status.QUEUED)
    if handler is None:
        job_finish(
            job=job, status=Job.Status.FAILED, owner=queued, error=f"No handler for job kind {job.kind!r}."
        )
        return
    permission = REQUIRED.get(job.kind)
    scope = job.domain if job.domain is not None else job.host  # a host's own jobs: pools, say
    if permission and job.actor is not None and scope is not None:
        if not has_perm(job.actor, permission, scope):
            why = explain(job.actor, permission, scope)
            job_finish(
                job=job,
                status=Job.Status.FAILED,
                owner=queued,
                error=f"Permission withdrawn from {job.actor}: {why}",
            )
            return
    if not _claim(job):
        return  # cancelled meanwhile, or another delivery of it started it
    lock = None
    if job.domain_id is not None:
        lock = _domain_lock(job)
        if lock is None:
            _unclaim(job)
            raise DomainBusy(job.domain_id)
    keeper = LeaseKeeper(job, lock=lock, watch_cancel=job.kind in CANCELLABLE)
    keeper.start()
    try:
        _execute(JobContext(job, keeper), handler)
    finally:
        keeper.stop()
        if lock is not None and lock.owned():
            lock.release()


def _claim(job: Job) -> bool:
    """queued -> running, one more attempt, a fresh lease: in one UPDATE, so of two deliveries
    of the same job only one starts it."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.DOMUS_JOB_LEASE_SECONDS)
    claimed = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING,
        attempts=F("attempts") + 1,
        started_at=Coalesce(F("started_at"), now),
        lease_expires_at=lease,
    )
    if claimed:
        job.refresh_from_db(
            fields=["status", "attempts", "started_at", "lease_expires_at", "cancel_requested"]
        )
    return bool(claimed)


def _unclaim(job: Job) -> None:
    """The domain is busy: back to queued as if this delivery had not started the job (the
    task retries in a second; meanwhile it can be cancelled like any queued job)."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": Job.Status.QUEUED,
        "attempts": F("attempts") - 1,
        "lease_expires_at": resend_deadline(now),
    }
    if job.attempts == 1:
        fields["started_at"] = None
    if job.step != WAITING_FOR_DOMAIN:
        fields["step"] = WAITING_FOR_DOMAIN
        fields["log"] = log_append(log_line(WAITING_FOR_DOMAIN, now))
    if Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).update(**fields):
        job.refresh_from_db(
            fields=["status", "attempts", "started_at", "lease_expires_at", "step", "log", "cancel_requested"]
        )
        if job.cancel_requested:  # cancelled in the moment it was marked running: honour it now
            job_finish(
                job=job, status=Job.Status.CANCELLED, owner=Q(status=Job.Status.QUEUED), step="Cancelled"
            )
            return
        if "step" in fields:
            publish(job_event(job))


def _execute(ctx: JobContext, handler: Handler) -> None:
    job = ctx.job
    owner = Q(status=Job.Status.RUNNING, attempts=job.attempts)
    publish(job_event(job))
    try:
        result = handler(ctx)
    except AttemptLost:
        logger.warning("job %s attempt %s stopped: another attempt owns the job", job.pk, job.attempts)
        return
    except JobCancelled as exc:
        done = job_finish(job=job, status=Job.Status.CANCELLED, owner=owner, step=str(exc) or "Cancelled")
    except JobFailed as exc:
        done = job_finish(job=job, status=Job.Status.FAILED, owner=owner, error=str(exc))
    except AgentError as exc:
        if is_transient(exc):  # the connection broke half-way: what happened is not known
            done = _settle(ctx, exc, owner)
        else:  # the agent's answer
            host = job.host.name if job.host else "host"
            done = job_finish(job=job, status=Job.Status.FAILED, owner=owner, error=f"{host}: {exc.detail}")
    except Exception as exc:
        logger.exception("job %s (%s) crashed", job.pk, job.kind)
        done = _settle(ctx, exc, owner)
    else:
        done = job_finish(job=job, status=Job.Status.SUCCEEDED, owner=owner, result=result or {})
    if not done:
        logger.warning("job %s attempt %s ended after another attempt took it over", job.pk, job.attempts)


def _settle(ctx: JobContext, exc: Exception, owner: Q) -> bool:
    """The handler stopped on an error that says nothing of what happened on the host (a crash,
    a connection that broke half-way): re-read the real state before saying how the job ended. A
    guest that did shut off is a shutdown that succeeded, whatever broke on the way."""
    job = ctx.job
    what = f"{type(exc).__name__}: {getattr(exc, 'detail', None) or exc}"
    failure = f"Internal error ({type(exc).__name__}); see the worker log."
    if isinstance(exc, AgentError) and is_transient(exc):
        failure = f"{job.host.name if job.host else 'The host'}: {exc.detail}"
    verify = VERIFY.get(job.kind)
    if verify is None:
        return job_finish(job=job, status=Job.Status.FAILED, owner=owner, error=failure)
    try:
        result = verify(ctx)
    except JobFailed as state:
        return job_finish(job=job, status=Job.Status.FAILED, owner=owner, error=f"{failure} {state}")
    except Exception as again:  # reading back failed too: say so, and that nothing is known
        logger.warning("job %s: cannot read back the state after %s", job.pk, what, exc_info=True)
        error = f"{failure} Its outcome could not be checked ({type(again).__name__}): check the state."
        return job_finish(job=job, status=Job.Status.FAILED, owner=owner, error=error)
    if result is None:
        return job_finish(job=job, status=Job.Status.FAILED, owner=owner, error=failure)
    ctx.log(f"Interrupted half-way ({what}); read back the state: {result.get('verified', 'done')}")
    return job_finish(job=job, status=Job.Status.SUCCEEDED, owner=owner, result=result)
