"""The outbox: a job is a committed row first, and a message to the workers after.

A request that commits a job answers 202 with it whether or not the broker (Redis) is there:
`dispatch_on_commit` tries to send the message once after the commit, without retrying (a request
does not wait on an absent broker), and records `dispatched_at` when it went. What is still
undispatched is sent by the relay (`relay_pending`), which every worker's sweeper runs each
DOMUS_JOB_RELAY_SECONDS, so a job accepted during an outage starts seconds after the broker is
back. A request that answers an error has rolled back: it leaves no row, so nothing runs later.

The embedded Redis keeps nothing on disk: when it restarts, the messages of queued jobs are gone.
The relay notices (a marker key it keeps in Redis is gone) and marks every queued job
undispatched, so they are sent again at once. A duplicate message is harmless: only one delivery can claim a
job (runner._claim).
"""

from __future__ import annotations

import functools
import logging
from datetime import timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from console.jobs.models import Job

logger = logging.getLogger(__name__)

RELAY_BATCH = 200
# A job younger than this is left to its request's own dispatch, which may still be on its way.
RELAY_GRACE_SECONDS = 1.0


def send(job_id: int) -> bool:
    """Send one job's message now; True when the broker took it (and the row says so)."""
    from console.jobs.tasks import run_job

    try:
        run_job.apply_async((job_id,), retry=False)
    except (BrokerError, redis.RedisError, OSError) as exc:
        logger.warning("job %s: the broker is unreachable (%s); the relay will send it", job_id, exc)
        return False
    Job.objects.filter(pk=job_id, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    return True


def dispatch_on_commit(job_id: int) -> None:
    transaction.on_commit(lambda: send(job_id), robust=True)


def undispatched() -> int:
    """How many queued jobs wait for the relay (for /healthz)."""
    return Job.objects.filter(status=Job.Status.QUEUED, dispatched_at__isnull=True).count()


def relay_pending() -> int:
    """Send the queued jobs whose message never went; stops at the first refusal (the broker is
    still away). Returns how many were sent."""
    if _broker_restarted():
        marked = Job.objects.filter(status=Job.Status.QUEUED).update(dispatched_at=None)
        if marked:
            logger.warning("the broker restarted empty; sending %d queued job(s) again", marked)
    cutoff = timezone.now() - timedelta(seconds=RELAY_GRACE_SECONDS)
    pending = Job.objects.filter(
        status=Job.Status.QUEUED, dispatched_at__isnull=True, created_at__lt=cutoff
    ).order_by("created_at", "id")
    sent = 0
    for job_id in pending.values_list("pk", flat=True)[:RELAY_BATCH]:
        if not send(job_id):
            break
        sent += 1
    if sent:
        logger.info("relay: sent %d job(s) the broker had not taken", sent)
    return sent


@functools.cache
def _broker_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def broker_marker_key() -> str:
    return f"{settings.DOMUS_REDIS_PREFIX}:broker-marker"


def _broker_restarted() -> bool:
    """Whether the broker lost what it held since the last look: a marker key that a relay leaves
    in it is gone (Redis restarted without persistence, or was flushed). Whichever relay puts it
    back first answers True; the first look of all does too, which resends the queued jobs once."""
    try:
        return bool(_broker_client(settings.REDIS_URL).set(broker_marker_key(), "1", nx=True))
    except (redis.RedisError, OSError):
        return False
