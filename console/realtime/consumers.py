from __future__ import annotations

import asyncio
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from console.access.policy import Reach, is_signed_in, reach
from console.realtime.dispatch import SkipsDbCleanup
from console.realtime.events import ACCESS_CHANGED, EVENTS_GROUP

# What each user may see is computed once per process and shared by all their sockets; an
# "access.changed" event (grants, roles, teams, members, reserved hosts, users) clears it at
# once, and the TTL bounds what a change made outside those paths (raw SQL, say) can miss.
REACH_TTL_SECONDS = 60.0


class ReachCache:
    """Per process: user id -> (domain.view, host.view) reaches, with the time computed."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[float, tuple[Reach, Reach]]] = {}
        self.generation = 0  # bumped by each access change: a reach computed across one is dropped
        # One computation per user at a time: when an entry expires, every socket of that user
        # misses together, and they all await the same one.
        self.pending: dict[int, asyncio.Task[tuple[Reach, Reach]]] = {}

    def get(self, user_id: int) -> tuple[Reach, Reach] | None:
        entry = self.entries.get(user_id)
        if entry is None or time.monotonic() - entry[0] > REACH_TTL_SECONDS:
            return None
        return entry[1]

    def put(self, user_id: int, reaches: tuple[Reach, Reach], *, since: float, generation: int) -> None:
        if generation == self.generation:
            self.entries[user_id] = (since, reaches)

    def invalidate(self) -> None:
        self.generation += 1
        self.entries.clear()
        self.pending.clear()  # computations under way finish for their callers, but are not shared


reach_cache = ReachCache()


def _reaches_of(user: Any) -> tuple[Reach, Reach]:
    return reach(user, "domain.view"), reach(user, "host.view")


async def _compute_reaches(user: Any) -> tuple[Reach, Reach]:
    since, generation = time.monotonic(), reach_cache.generation
    try:
        reaches: tuple[Reach, Reach] = await database_sync_to_async(_reaches_of)(user)
    finally:
        if reach_cache.pending.get(user.pk) is asyncio.current_task():
            del reach_cache.pending[user.pk]
    reach_cache.put(user.pk, reaches, since=since, generation=generation)
    return reaches


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


class EventsConsumer(SkipsDbCleanup, AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """/ws/events/: live state for a signed-in browser, each event only to those who may see its
    object. After a reconnect the page re-fetches a snapshot."""

    no_db_cleanup = frozenset({"domus.event"})  # see console.realtime.dispatch

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not is_signed_in(user):
            await self.close()  # before accept: the handshake is refused with 403
            return
        await self._refresh()
        await self.channel_layer.group_add(EVENTS_GROUP, self.channel_name)
        await self.accept()

    async def _refresh(self) -> tuple[Reach, Reach]:
        user = self.scope["user"]
        if (cached := reach_cache.get(user.pk)) is not None:
            return cached
        task = reach_cache.pending.get(user.pk)
        if task is None:
            task = asyncio.create_task(_compute_reaches(user))
            reach_cache.pending[user.pk] = task
        # Shielded: a socket closing while it waits must not cancel the others' computation.
        return await asyncio.shield(task)

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(EVENTS_GROUP, self.channel_name)

    async def domus_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        if event.get("type") == ACCESS_CHANGED:
            reach_cache.invalidate()  # every socket of the process hears it; repeating is harmless
            return
        domains, hosts = await self._refresh()
        if may_see(event, domains, hosts, self.scope["user"].pk):
            await self.send_json(event)
