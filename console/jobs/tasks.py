from __future__ import annotations

from celery import shared_task
from django.conf import settings

from console.jobs import leases
from console.jobs.dispatch import relay_pending
from console.jobs.periodic import periodic
from console.jobs.runner import DomainBusy, job_run

# The scheduler runs these too; each worker also does (leases.Sweeper), so that lost jobs are
# recovered and the outbox relayed even while the scheduler is down.
periodic("jobs: relay the outbox", every=lambda: settings.DOMUS_JOB_RELAY_SECONDS)(relay_pending)
periodic("jobs: recover lost jobs", every=lambda: settings.DOMUS_JOB_SWEEP_SECONDS)(leases.jobs_sweep)


@shared_task(bind=True, max_retries=None, acks_late=True)
def run_job(self, job_id: int) -> None:  # type: ignore[no-untyped-def]
    try:
        job_run(job_id)
    except DomainBusy as exc:
        raise self.retry(countdown=1, exc=exc) from exc
