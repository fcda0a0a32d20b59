"""Publishing typed events to browsers through the Channels layer (never console bytes)."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

EVENTS_GROUP = "events"
# Who may see what changed: open event sockets drop what they cached of their users' reach.
ACCESS_CHANGED = "access.changed"
# Open console sockets listen here (not to every state event): access changes and sign-outs.
ACCESS_GROUP = "access"
SESSION_ENDED = "session.ended"


async def apublish(event: dict[str, Any], group: str = EVENTS_GROUP) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    await layer.group_send(group, {"type": "domus.event", "event": event})


def publish(event: dict[str, Any], group: str = EVENTS_GROUP) -> None:
    async_to_sync(apublish)(event, group)


def publish_on_commit(event: dict[str, Any], group: str = EVENTS_GROUP) -> None:
    transaction.on_commit(lambda: publish(event, group))
