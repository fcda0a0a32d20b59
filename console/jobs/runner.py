"""Runs one job: finds its handler, serialises it per domain, records progress, log and outcome.

Handlers are registered by the apps that own the work (`domains/jobs.py`) with `@job_handler`.
A handler raises `JobFailed` with a message written for a person; agent errors are reported with
the agent's own detail. Redelivery after a worker died re-runs the handler: agent operations are
idempotent, so that is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.lock import Lock

from agent.client import AgentError
from console.access.policy import explain, has_perm
from console.audit.services import audit_record
from console.jobs.events import job_event
from console.jobs.models import Job
from console.realtime.events import publish

logger = logging.getLogger(__name__)

Handler = Callable[["JobContext"], dict[str, Any] | None]
HANDLERS: dict[str, Handler] = {}
# The permission a job's actor must still hold on its domain when a worker picks it up (it may
# have been withdrawn while the job waited).
REQUIRED: dict[str, str] = {}

DOMAIN_LOCK_SECONDS = 15 * 60


class JobFailed(Exception):
    """The job cannot finish; the message is shown to the person who started it."""


class DomainBusy(Exception):
    """Another job holds the domain; the task retries later."""


def job_handler(kind: str, *, permission: str | None = None) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        if permission is not None:
            REQUIRED[kind] = permission
        return fn

    return register


class JobContext:
    def __init__(self, job: Job) -> None:
        self.job = job

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.job.params)

    def progress(self, percent: int, step: str) -> None:
        self.job.progress = max(0, min(100, percent))
        self.job.step = step
        self._append_log(step)
        self._save("progress", "step", "log")

    def log(self, line: str) -> None:
        self._append_log(line)
        self._save("log")

    def _append_log(self, line: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        self.job.log += f"{stamp} {line}\n"

    def _save(self, *fields: str) -> None:
        self.job.save(update_fields=list(fields))
        publish(job_event(self.job))


def domain_lock_key(domain_id: int) -> str:
    return f"{settings.DOMUS_REDIS_PREFIX}:lock:domain:{domain_id}"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def _domain_lock(job: Job) -> Lock | None:
    """The domain's lock, held for this job; None while another job holds it. The lock's value
    is the job's id, so a redelivered job (its worker died holding the lock) takes it back
    instead of waiting for it to expire."""
    assert job.domain_id is not None
    key = domain_lock_key(job.domain_id)
    token = str(job.pk)
    lock: Lock = _redis().lock(key, timeout=DOMAIN_LOCK_SECONDS)
    if lock.acquire(blocking=False, token=token):
        return lock
    if lock.redis.get(key) == token.encode():
        lock.local.token = token.encode()
        lock.reacquire()
        return lock
    return None


def job_run(job_id: int) -> None:
    job = Job.objects.select_related("host", "domain", "actor").filter(pk=job_id).first()
    if job is None or job.is_finished:
        return  # deleted, or a redelivery of a job that already finished
    handler = HANDLERS.get(job.kind)
    if handler is None:
        _finish(job, Job.Status.FAILED, error=f"No handler for job kind {job.kind!r}.")
        return
    permission = REQUIRED.get(job.kind)
    if permission and job.actor is not None and job.domain is not None:
        if not has_perm(job.actor, permission, job.domain):
            why = explain(job.actor, permission, job.domain)
            _finish(job, Job.Status.FAILED, error=f"Permission withdrawn from {job.actor}: {why}")
            return
    lock = None
    if job.domain_id is not None:
        lock = _domain_lock(job)
        if lock is None:
            if job.step != "Waiting for another job on this domain":
                JobContext(job).progress(0, "Waiting for another job on this domain")
            raise DomainBusy(job.domain_id)
    try:
        _execute(job, handler)
    finally:
        if lock is not None and lock.owned():
            lock.release()


def _execute(job: Job, handler: Handler) -> None:
    ctx = JobContext(job)
    job.started_at = job.started_at or timezone.now()
    job.attempts += 1
    # Only from queued (or running: a redelivery); a job cancelled meanwhile stays cancelled.
    started = Job.objects.filter(pk=job.pk, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).update(
        status=Job.Status.RUNNING, started_at=job.started_at, attempts=job.attempts
    )
    if not started:
        return
    job.status = Job.Status.RUNNING
    if job.attempts > 1:
        ctx.log(f"Attempt {job.attempts} (the previous worker stopped before finishing)")
    try:
        result = handler(ctx)
    except JobFailed as exc:
        _finish(job, Job.Status.FAILED, error=str(exc))
    except AgentError as exc:
        host = job.host.name if job.host else "host"
        _finish(job, Job.Status.FAILED, error=f"{host}: {exc.detail}")
    except Exception as exc:
        logger.exception("job %s (%s) crashed", job.pk, job.kind)
        _finish(
            job,
            Job.Status.FAILED,
            error=f"Internal error ({type(exc).__name__}); see the worker log.",
        )
    else:
        _finish(job, Job.Status.SUCCEEDED, result=result or {})


def _finish(job: Job, status: str, *, error: str = "", result: dict[str, Any] | None = None) -> None:
    job.status = status
    job.error = error
    job.result = result or {}
    job.finished_at = timezone.now()
    if status == Job.Status.SUCCEEDED:
        job.progress = 100
        job.step = "Done"
    else:
        job.step = "Failed"
    stamp = job.finished_at.strftime("%H:%M:%S")
    job.log += f"{stamp} {job.step}{': ' + error if error else ''}\n"
    # The domain may have been deleted by this very job: don't let the FK write resurrect it.
    with transaction.atomic():
        job.save(update_fields=["status", "error", "result", "finished_at", "progress", "step", "log"])
        outcome = "success" if status == Job.Status.SUCCEEDED else "failed"
        audit_record(
            action="job.finished",
            actor=job.actor,
            obj=job,
            outcome=outcome,
            detail=error,
            changes={"kind": job.kind, "target": job.target_name, "attempts": job.attempts},
        )
    publish(job_event(job))
