"""Publishing typed events to browsers through the Channels layer (never console bytes).

Events are a courtesy on top of the database, which holds the truth: a browser that misses one
re-fetches its snapshot when its socket reconnects. So a publish never fails its caller. While
Redis is away, one publish waits at most PUBLISH_TIMEOUT_SECONDS, and the next ones are dropped
at once for QUIET_SECONDS, so that a request or a job does not wait on each event in turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

EVENTS_GROUP = "events"
# Who may see what changed: open event sockets drop what they cached of their users' reach.
ACCESS_CHANGED = "access.changed"
# Open console sockets listen here (not to every state event): access changes and sign-outs.
ACCESS_GROUP = "access"
SESSION_ENDED = "session.ended"

PUBLISH_TIMEOUT_SECONDS = 2.0
QUIET_SECONDS = 5.0


class _Outage:
    """When publishing last failed, per process (threads race benignly on a float)."""

    quiet_until = 0.0
    dropped = 0


async def apublish(event: dict[str, Any], group: str = EVENTS_GROUP) -> bool:
    """Send `event` to `group`; False (logged, never raised) when the channel layer is away."""
    if time.monotonic() < _Outage.quiet_until:
        _Outage.dropped += 1
        return False
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await asyncio.wait_for(
            layer.group_send(group, {"type": "domus.event", "event": event}), PUBLISH_TIMEOUT_SECONDS
        )
    except (RedisError, OSError, TimeoutError) as exc:
        _Outage.quiet_until = time.monotonic() + QUIET_SECONDS
        _Outage.dropped += 1
        logger.warning(
            "events: cannot publish %s (%s: %s); dropping events for %.0f s (browsers re-sync when "
            "they reconnect)",
            event.get("type", "an event"),
            type(exc).__name__,
            exc,
            QUIET_SECONDS,
        )
        return False
    if _Outage.dropped:
        logger.info("events: publishing again (%d dropped meanwhile)", _Outage.dropped)
        _Outage.dropped = 0
    return True


def publish(event: dict[str, Any], group: str = EVENTS_GROUP) -> bool:
    return bool(async_to_sync(apublish)(event, group))


def publish_on_commit(event: dict[str, Any], group: str = EVENTS_GROUP) -> None:
    transaction.on_commit(lambda: publish(event, group))
