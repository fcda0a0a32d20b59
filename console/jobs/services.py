from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from console.access.policy import explain, has_perm, has_site_perm
from console.audit.services import Origin, audit_record
from console.errors import Conflict, PermissionDenied
from console.jobs.events import job_event
from console.jobs.models import Job
from console.realtime.events import publish_on_commit


def job_enqueue(
    *,
    kind: str,
    actor: Any,
    host: Any,
    domain: Any = None,
    target_name: str = "",
    params: dict[str, Any] | None = None,
) -> Job:
    """Record a job and hand it to a worker once the surrounding transaction commits."""
    from console.jobs.tasks import run_job

    job = Job.objects.create(
        kind=kind,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        host=host,
        domain=domain,
        target_name=target_name or (str(domain) if domain is not None else ""),
        params=params or {},
        step="Waiting for a worker",
    )
    transaction.on_commit(lambda: run_job.delay(job.pk))
    publish_on_commit(job_event(job))
    return job


def job_cancel(*, job: Job, actor: Any, origin: Origin | None = None) -> Job:
    """Cancel a job that has not started. (A running job is left to finish: the agent's
    operations are short or idempotent, and stopping one half-way would leave things half done.)"""
    from console.jobs.runner import REQUIRED  # the runner's module imports the world; load late

    permission = REQUIRED.get(job.kind)
    if job.actor_id != getattr(actor, "pk", None):
        allowed = (
            has_perm(actor, permission, job.domain)
            if permission and job.domain is not None
            else has_site_perm(actor, "host.manage")
        )
        if not allowed:
            raise PermissionDenied(explain(actor, permission or "host.manage", job.domain))
    with transaction.atomic():
        now = timezone.now()
        who = actor.get_username() if getattr(actor, "is_authenticated", False) else "the system"
        step = f"Cancelled by {who}"
        cancelled = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
            status=Job.Status.CANCELLED, finished_at=now, step=step, error=""
        )
        job.refresh_from_db()
        if not cancelled:
            raise Conflict(
                f"Job #{job.pk} is {job.status}: only a job that has not started can be cancelled."
            )
        Job.objects.filter(pk=job.pk).update(log=job.log + f"{now:%H:%M:%S} {step}\n")
        audit_record(action="job.cancel", actor=actor, origin=origin, obj=job, changes={"kind": job.kind})
        if job.kind == "domain.create" and job.domain is not None:
            from domains.services import domain_forget  # domains build on jobs, not the reverse

            domain_forget(domain=job.domain)  # never defined on the host: nothing else to undo
            job.refresh_from_db()
        publish_on_commit(job_event(job))
    return job
