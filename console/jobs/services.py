from __future__ import annotations

from typing import Any

from django.db import transaction

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
