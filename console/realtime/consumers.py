from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from console.access.policy import has_perm
from console.realtime.events import EVENTS_GROUP


class EventsConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """/ws/events/: live state for a logged-in browser. After a reconnect the page re-fetches."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not has_perm(user, "event.view"):
            await self.close()  # before accept: the handshake is refused with 403
            return
        await self.channel_layer.group_add(EVENTS_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(EVENTS_GROUP, self.channel_name)

    async def domus_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])
