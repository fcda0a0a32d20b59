"""The sweeper: finds jobs whose worker was lost and gives them to another.

Every Celery worker process runs one sweeper thread (started on `worker_ready`), so the embedded
default's single worker recovers the jobs of its own previous, killed incarnation, and several
workers in production cover for each other. Sweepers do not coordinate: each recovery is one
conditional UPDATE on the row as it was read (services.job_recover, services.job_resend), so of
two sweepers that find the same job only one requeues it.

- A running job whose lease lapsed (DOMUS_JOB_LEASE_SECONDS without a renewal) goes back to
  the queue, up to DOMUS_JOB_MAX_ATTEMPTS starts; then it fails with a message for a person.
- A queued job that no worker has touched for DOMUS_JOB_QUEUED_RESEND_SECONDS is sent again.

The same thread is the outbox's relay (console/jobs/dispatch.py): each DOMUS_JOB_RELAY_SECONDS it
sends the queued jobs whose message never reached the broker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

from console.jobs.dispatch import relay_pending
from console.jobs.services import job_recover, job_resend, lapsed_running, stale_queued

logger = logging.getLogger(__name__)

SWEEP_BATCH = 100


def jobs_sweep() -> int:
    """One pass; returns how many jobs were queued or sent again."""
    now = timezone.now()
    count = 0
    for job in lapsed_running(now).select_related("actor", "domain", "host")[:SWEEP_BATCH]:
        if job_recover(job=job, now=now):
            logger.warning("job %s (%s): its worker was lost; queued it again", job.pk, job.kind)
            count += 1
    for job_id in stale_queued(now).values_list("pk", flat=True)[:SWEEP_BATCH]:
        if job_resend(job_id=job_id, now=now):
            logger.warning("job %s: still queued with no worker on it; sent it again", job_id)
            count += 1
    return count


class Sweeper:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        relay_every = min(self.interval, settings.DOMUS_JOB_RELAY_SECONDS)
        next_sweep = 0.0  # the first pass at once: a restarted worker picks up its own lost jobs
        wait = 0.0
        while not self._stop.wait(wait):
            wait = relay_every
            try:
                relay_pending()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.interval
                    jobs_sweep()
            except DatabaseError as exc:
                logger.warning("job sweeper: %s; trying again in %.0f s", exc, relay_every)
            except Exception:
                logger.exception("job sweeper pass failed")
            finally:
                connections.close_all()  # this thread's connections only


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeper(**_kwargs: Any) -> None:
    global _sweeper
    if _sweeper is None:
        _sweeper = Sweeper(settings.DOMUS_JOB_SWEEP_SECONDS)
        _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_kwargs: Any) -> None:
    global _sweeper
    if _sweeper is not None:
        _sweeper.stop()
        _sweeper = None
