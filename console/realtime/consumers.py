from __future__ import annotations

import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from console.access.policy import Reach, is_signed_in, reach
from console.realtime.events import EVENTS_GROUP

# Grants change rarely; what a socket may see is recomputed this often (and at each connect).
REACH_TTL_SECONDS = 5.0


def may_see(event: dict[str, Any], domains: Reach, hosts: Reach, user_id: int) -> bool:
    """Whether a user with these reaches (domain.view, host.view) may receive this event."""
    kind = event.get("type", "")
    if kind in ("domain.state", "domain.deleted"):
        d = event["domain"]
        return domains.reaches_domain(d["id"], d["host"], d["team"])
    if kind == "job.updated":
        j = event["job"]
        if j["domain"] is None:  # its domain is gone: the host's people, and whoever ran it
            return domains.site or j["host"] in domains.hosts or j.get("actor_id") == user_id
        return domains.reaches_domain(j["domain"], j["host"], j["domain_team"])
    if kind in ("host.state", "host.removed"):
        h = event["host"]
        return hosts.reaches_host(h["id"], set(h["teams"]))
    return False


class EventsConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """/ws/events/: live state for a signed-in browser, each event only to those who may see its
    object. After a reconnect the page re-fetches a snapshot."""

    reaches: tuple[Reach, Reach] | None = None
    reaches_at = 0.0

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not is_signed_in(user):
            await self.close()  # before accept: the handshake is refused with 403
            return
        await self._refresh()
        await self.channel_layer.group_add(EVENTS_GROUP, self.channel_name)
        await self.accept()

    async def _refresh(self) -> tuple[Reach, Reach]:
        if self.reaches is None or time.monotonic() - self.reaches_at > REACH_TTL_SECONDS:
            user = self.scope["user"]
            self.reaches = await database_sync_to_async(
                lambda: (reach(user, "domain.view"), reach(user, "host.view"))
            )()
            self.reaches_at = time.monotonic()
        return self.reaches

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(EVENTS_GROUP, self.channel_name)

    async def domus_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        domains, hosts = await self._refresh()
        if may_see(event, domains, hosts, self.scope["user"].pk):
            await self.send_json(event)
