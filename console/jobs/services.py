"""Writes to jobs: enqueue, cancel, finish, and the recovery of jobs whose worker was lost.

Every change of a job's status is a conditional UPDATE (the status it must still have, and for a
running job the attempt that owns it), so two workers, a sweeper and a person cancelling can
race without a job being run, finished or retried twice."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from console.access.policy import explain, has_perm, has_site_perm
from console.audit.services import Origin, audit_record
from console.errors import Conflict, PermissionDenied, TooBusy
from console.jobs.dispatch import dispatch_on_commit, send
from console.jobs.events import job_event
from console.jobs.models import Job
from console.jobs.registry import ON_NOT_DONE, REQUIRED, is_cancellable
from console.realtime.events import publish, publish_on_commit


def log_line(text: str, now: datetime | None = None) -> str:
    return f"{(now or timezone.now()):%H:%M:%S} {text}\n"


def log_append(text: str) -> Concat:
    """An expression appending `text` to the job's log in the UPDATE itself, so that lines
    written meanwhile by someone else (a cancel request) are kept."""
    return Concat(F("log"), Value(text), output_field=TextField())


def resend_deadline(now: datetime) -> datetime:
    """When a queued job no worker has touched is sent to the queue again (see leases.py)."""
    return now + timedelta(seconds=settings.DOMUS_JOB_QUEUED_RESEND_SECONDS)


def lease_lapsed(now: datetime) -> Q:
    # No lease on a running job: it was started before leases existed; treat it as lapsed.
    return Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True)


def job_enqueue(
    *,
    kind: str,
    actor: Any,
    host: Any,
    domain: Any = None,
    target_name: str = "",
    params: dict[str, Any] | None = None,
) -> Job:
    """Record a job and hand it to a worker once the surrounding transaction commits (the outbox:
    console/jobs/dispatch.py). Refused (TooBusy) when its domain or its user already has as many
    jobs waiting as they may."""
    _refuse_when_too_many_wait(actor=actor, domain=domain)
    job = Job.objects.create(
        kind=kind,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        host=host,
        domain=domain,
        target_name=target_name or (str(domain) if domain is not None else ""),
        params=params or {},
        step="Waiting for a worker",
        lease_expires_at=resend_deadline(timezone.now()),
    )
    dispatch_on_commit(job.pk)
    publish_on_commit(job_event(job))
    return job


# What a caller refused for too many waiting jobs is told to wait: about what a worker takes to
# get through a few (each power job is seconds).
QUEUE_RETRY_AFTER_SECONDS = 10


def _refuse_when_too_many_wait(*, actor: Any, domain: Any) -> None:
    """A domain's jobs run one after another, so hundreds queued on one block it for hours (a
    script in a loop, a stuck key); a user with hundreds queued starves everyone else's."""
    queued = Job.objects.filter(status=Job.Status.QUEUED)
    if domain is not None and domain.pk is not None:
        limit = settings.DOMUS_JOBS_QUEUED_PER_DOMAIN
        if queued.filter(domain=domain).count() >= limit:
            raise TooBusy(
                f"{domain} already has {limit} jobs waiting; try again when they have run.",
                retry_after=QUEUE_RETRY_AFTER_SECONDS,
            )
    if getattr(actor, "is_authenticated", False):
        limit = settings.DOMUS_JOBS_QUEUED_PER_USER
        if queued.filter(actor=actor).count() >= limit:
            raise TooBusy(
                f"You already have {limit} jobs waiting; try again when they have run.",
                retry_after=QUEUE_RETRY_AFTER_SECONDS,
            )


def job_cancel(*, job: Job, actor: Any, origin: Origin | None = None) -> Job:
    """Cancel a job that has not started; ask a running one to stop when its kind can stop
    half-way (it declared itself cancellable and checks at safe points). Any other running job
    is left to finish: stopping it half-way would leave things half done."""
    permission = REQUIRED.get(job.kind)
    if job.actor_id != getattr(actor, "pk", None):
        allowed = (
            has_perm(actor, permission, job.domain)
            if permission and job.domain is not None
            else has_site_perm(actor, "host.manage")
        )
        if not allowed:
            raise PermissionDenied(explain(actor, permission or "host.manage", job.domain))
    who = actor.get_username() if getattr(actor, "is_authenticated", False) else "the system"
    with transaction.atomic():
        now = timezone.now()
        step = f"Cancelled by {who}"
        cancelled = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
            status=Job.Status.CANCELLED,
            finished_at=now,
            step=step,
            error="",
            lease_expires_at=None,
            log=log_append(log_line(step, now)),
        )
        if not cancelled:
            _cancel_running(job=job, who=who, now=now)
        job.refresh_from_db()
        audit_record(
            action="job.cancel",
            actor=actor,
            origin=origin,
            obj=job,
            changes={"kind": job.kind, "status": job.status},
        )
        if cancelled and job.kind == "domain.create" and job.domain is not None:
            from domains.services import domain_forget  # domains build on jobs, not the reverse

            domain_forget(domain=job.domain)  # never defined on the host: nothing else to undo
            job.refresh_from_db()
        publish_on_commit(job_event(job))
    return job


def _cancel_running(*, job: Job, who: str, now: datetime) -> None:
    job.refresh_from_db()
    if job.status == Job.Status.RUNNING and is_cancellable(job.kind):
        step = f"Cancelling (requested by {who})"
        requested = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
            cancel_requested=True, step=step, log=log_append(log_line(step, now))
        )
        if requested:
            return
        job.refresh_from_db()
    if job.status == Job.Status.RUNNING:
        raise Conflict(
            f"Job #{job.pk} is running, and a {job.kind} job cannot be stopped half-way (that "
            f"would leave {job.target_name or 'its target'} half done): wait for it to finish."
        )
    raise Conflict(f"Job #{job.pk} is {job.status}: it has finished, so there is nothing to cancel.")


_FINAL_STEP = {Job.Status.SUCCEEDED.value: "Done", Job.Status.CANCELLED.value: "Cancelled"}


def job_finish(
    *,
    job: Job,
    status: str,
    owner: Q,
    error: str = "",
    step: str = "",
    result: dict[str, Any] | None = None,
) -> bool:
    """Record a job's outcome, if the job is still in the hands of the caller (`owner`: e.g.
    running under this attempt). False when it is not (another attempt took it over): then
    nothing is written."""
    now = timezone.now()
    if not step:
        step = _FINAL_STEP.get(status, "Failed")
    fields: dict[str, Any] = {
        "status": status,
        "error": error,
        "result": result or {},
        "finished_at": now,
        "step": step[:255],
        "lease_expires_at": None,
    }
    if status == Job.Status.SUCCEEDED:
        fields["progress"] = 100
    line = log_line(f"{step}{': ' + error if error else ''}", now)
    # The domain may have been deleted by this very job: an UPDATE of these fields alone
    # cannot resurrect it (a save() of the whole row would write its id back).
    with transaction.atomic():
        if not Job.objects.filter(owner, pk=job.pk).update(**fields, log=log_append(line)):
            return False
        for name, value in fields.items():
            setattr(job, name, value)
        job.log += line
        not_done = status in (Job.Status.FAILED, Job.Status.CANCELLED)
        if not_done and (hook := ON_NOT_DONE.get(job.kind)) is not None:
            hook(job)
        outcome = "success" if status == Job.Status.SUCCEEDED else "failed"
        audit_record(
            action="job.finished",
            actor=job.actor,
            obj=job,
            outcome=outcome,
            detail=error or (step if status == Job.Status.CANCELLED else ""),
            changes={
                "kind": job.kind,
                "target": job.target_name,
                "attempts": job.attempts,
                "status": status,
            },
        )
    publish(job_event(job))
    return True


def job_recover(*, job: Job, now: datetime | None = None, resend: bool = True) -> bool:
    """A running job whose lease lapsed: its worker died (killed, out of memory, restarted).
    Queue it again (and with `resend`, send it to the queue), or fail it once it has been
    started DOMUS_JOB_MAX_ATTEMPTS times, or finish it as cancelled if that was asked for.
    True when it was queued again; False when it ended or someone else got to it first."""
    now = now or timezone.now()
    # The row as it was read: if it changed meanwhile (another sweeper, a late renewal, a
    # cancel request), this recovery does nothing.
    owner = Q(
        lease_lapsed(now),
        status=Job.Status.RUNNING,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
    )
    limit = settings.DOMUS_JOB_MAX_ATTEMPTS
    if job.cancel_requested:
        job_finish(
            job=job,
            status=Job.Status.CANCELLED,
            owner=owner,
            step="Cancelled: the worker running it was lost before it could stop",
        )
        return False
    if job.attempts >= limit:
        target = job.target_name or "the target"
        job_finish(
            job=job,
            status=Job.Status.FAILED,
            owner=owner,
            error=(
                f"The worker running this job was lost {job.attempts} times (killed, out of memory "
                f"or restarted) before it finished, so it is not tried again. Check {target}'s "
                "state before running it again."
            ),
        )
        return False
    step = f"Worker lost; retrying (attempt {job.attempts + 1} of {limit})"
    with transaction.atomic():
        queued = Job.objects.filter(owner, pk=job.pk).update(
            status=Job.Status.QUEUED,
            step=step,
            lease_expires_at=resend_deadline(now),
            dispatched_at=None,
            log=log_append(log_line(step, now)),
        )
        if not queued:
            return False
        job.refresh_from_db()
        if resend:
            dispatch_on_commit(job.pk)
        publish_on_commit(job_event(job))
    return True


def job_resend(*, job_id: int, now: datetime | None = None) -> bool:
    """A queued job that no worker has touched for DOMUS_JOB_QUEUED_RESEND_SECONDS: its message
    may have been lost (Redis restarted empty), so send another. A duplicate is harmless: only
    one delivery can start the job."""
    now = now or timezone.now()
    minutes = settings.DOMUS_JOB_QUEUED_RESEND_SECONDS / 60
    line = log_line(f"No worker took this job in {minutes:g} min; sent it to the queue again", now)
    resent = (
        stale_queued(now)
        .filter(pk=job_id)
        .update(lease_expires_at=resend_deadline(now), dispatched_at=None, log=log_append(line))
    )
    if resent:
        send(job_id)
    return bool(resent)


def lapsed_running(now: datetime) -> QuerySet[Job]:
    return Job.objects.filter(lease_lapsed(now), status=Job.Status.RUNNING)


def stale_queued(now: datetime) -> QuerySet[Job]:
    cutoff = now - timedelta(seconds=settings.DOMUS_JOB_QUEUED_RESEND_SECONDS)
    stale = Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True, created_at__lt=cutoff)
    return Job.objects.filter(stale, status=Job.Status.QUEUED)
