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


async def apublish(event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    await layer.group_send(EVENTS_GROUP, {"type": "domus.event", "event": event})


def publish(event: dict[str, Any]) -> None:
    async_to_sync(apublish)(event)


def publish_on_commit(event: dict[str, Any]) -> None:
    transaction.on_commit(lambda: publish(event))
