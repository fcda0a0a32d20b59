from __future__ import annotations

from celery import shared_task

from console.jobs import leases  # noqa: F401  (each worker runs the sweeper of lost jobs)
from console.jobs.runner import DomainBusy, job_run


@shared_task(bind=True, max_retries=None, acks_late=True)
def run_job(self, job_id: int) -> None:  # type: ignore[no-untyped-def]
    try:
        job_run(job_id)
    except DomainBusy as exc:
        raise self.retry(countdown=1, exc=exc) from exc
