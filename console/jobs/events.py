from __future__ import annotations

from typing import Any

from console.jobs.models import Job
from console.jobs.registry import can_cancel, offer


def job_event(job: Job) -> dict[str, Any]:
    return {
        "type": "job.updated",
        "job": {
            "id": job.pk,
            "kind": job.kind,
            "status": job.status,
            "progress": job.progress,
            "step": job.step,
            "error": job.error,
            "cancellable": can_cancel(job),  # whether a Cancel button makes sense now
            "offer": offer(job),  # a domain action to offer after a failure, e.g. "force-off"
            "domain": job.domain_id,
            "host": job.host_id,
            # Who may see it: those who may see its domain (for jobs on a domain).
            "domain_team": job.domain.team_id if job.domain is not None else None,
            "target": job.target_name,
            "actor": job.actor.get_username() if job.actor else None,
            "actor_id": job.actor_id,
        },
    }
