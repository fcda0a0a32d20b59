from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from console.access.policy import Reach, is_signed_in, reach
from console.realtime.credentials import EndsWithItsCredential
from console.realtime.dispatch import SkipsDbCleanup
from console.realtime.events import ACCESS_CHANGED, EVENTS_GROUP, SESSION_ENDED

# What each credential may see is computed once per process and shared by all its sockets: a
# user's, or an API token's narrowed to some permissions (two sockets of one user may differ).
# An "access.changed" event (grants, roles, teams, members, reserved hosts, users, tokens) clears
# it at once, and the TTL bounds what a change made outside those paths (raw SQL, say) can miss.
REACH_TTL_SECONDS = 60.0

CacheKey = tuple[int, frozenset[str] | None]


def reach_key(user: Any) -> CacheKey:
    """Who sees what: the user, and the permissions the token that authenticated them is
    narrowed to (None: all of the user's)."""
    return user.pk, getattr(user, "_domus_token_permissions", None)


class ReachCache:
    """Per process: reach_key -> (domain.view, host.view) reaches, with the time computed."""

    def __init__(self) -> None:
        self.entries: dict[CacheKey, tuple[float, tuple[Reach, Reach]]] = {}
        self.generation = 0  # bumped by each access change: a reach computed across one is dropped
        # One computation per credential at a time: when an entry expires, every socket of that
        # credential misses together, and they all await the same one.
        self.pending: dict[CacheKey, asyncio.Task[tuple[Reach, Reach]]] = {}

    def get(self, key: CacheKey) -> tuple[Reach, Reach] | None:
        entry = self.entries.get(key)
        if entry is None or time.monotonic() - entry[0] > REACH_TTL_SECONDS:
            return None
        return entry[1]

    def put(self, key: CacheKey, reaches: tuple[Reach, Reach], *, since: float, generation: int) -> None:
        if generation == self.generation:
            self.entries[key] = (since, reaches)

    def invalidate(self) -> None:
        self.generation += 1
        self.entries.clear()
        self.pending.clear()  # computations under way finish for their callers, but are not shared


reach_cache = ReachCache()


def _reaches_of(user: Any) -> tuple[Reach, Reach]:
    return reach(user, "domain.view"), reach(user, "host.view")


async def _compute_reaches(user: Any) -> tuple[Reach, Reach]:
    key = reach_key(user)
    since, generation = time.monotonic(), reach_cache.generation
    try:
        reaches: tuple[Reach, Reach] = await database_sync_to_async(_reaches_of)(user)
    finally:
        if reach_cache.pending.get(key) is asyncio.current_task():
            del reach_cache.pending[key]
    reach_cache.put(key, reaches, since=since, generation=generation)
    return reaches


def narrowed(before: Reach, after: Reach) -> bool:
    """Whether `after` lost anything `before` reached."""
    if before.site and not after.site:
        return True
    if after.site:
        return False
    return bool(before.teams - after.teams or before.hosts - after.hosts or before.domains - after.domains)


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
    if kind in ("host.state", "host.removed", "host.resources"):
        h = event["host"]
        return hosts.reaches_host(h["id"], set(h["teams"]))
    return False


async def release_channel(layer: Any, channel: str | None) -> None:
    """Make the channel layer forget `channel`, if its consumer's end left it there.

    channels_redis's pub/sub layer keeps a queue and a Redis subscription per channel and drops
    them only when a receive waiting on the channel is cancelled, which Channels' consumer loop
    does when the consumer ends. A receive that had just finished instead (a message in hand
    as the socket closed: Channels takes the close first and drops the message) is not waiting,
    and nothing ever dropped that channel. So: drop what is queued (nobody is left to read it),
    wait once more and cancel, as the consumer loop would have."""
    channels = getattr(layer, "channels", None)  # per process and event loop
    if channel is None or not isinstance(channels, dict) or channel not in channels:
        return
    for _ in range(1000):  # messages already queued for it (it is in no group any more)
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)  # one step: it takes a queued message, or waits for one
        if not receiving.done():
            break
        with contextlib.suppress(Exception):
            receiving.result()  # dropped
    receiving.cancel()
    await asyncio.wait([receiving])


class LeavesNothingBehind:
    """A consumer that, however it ends, leaves nothing of itself in the channel layer: not its
    name in a group (every later event would be fanned out to it, and the group grow for ever),
    nor its channel (bench/soak_bench.py: a quarter of the event sockets closed while events
    were on their way left one, and four in five the other).

    Two ways led there. Sending to a browser that has just gone raises (uvicorn's
    ClientDisconnected, an OSError), which ended the consumer at once, before its disconnect()
    left its groups, and uvicorn says nothing of it: such a send is dropped here instead, and
    the disconnect already queued ends the consumer as usual. And the groups joined with
    join_group() are left, and the channel released, at the end whatever ended it."""

    _joined: tuple[str, ...] = ()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_unless_gone(message: dict[str, Any]) -> None:
            with contextlib.suppress(OSError):  # gone: its websocket.disconnect is on its way
                await send(message)

        try:
            await super().__call__(scope, receive, send_unless_gone)  # type: ignore[misc]
        finally:
            await self.leave_groups()
            await release_channel(getattr(self, "channel_layer", None), getattr(self, "channel_name", None))

    async def join_group(self, group: str) -> None:
        self._joined = (*self._joined, group)  # first: a cancelled join is left too
        await self.channel_layer.group_add(group, self.channel_name)  # type: ignore[attr-defined]

    async def leave_groups(self) -> None:
        joined, self._joined = self._joined, ()
        for group in joined:
            await self.channel_layer.group_discard(group, self.channel_name)  # type: ignore[attr-defined]


class EventsConsumer(EndsWithItsCredential, LeavesNothingBehind, SkipsDbCleanup, AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """/ws/events/: live state for a signed-in browser (or a script with a token), each event
    only to those who may see its object. After a reconnect the page re-fetches a snapshot.

    It closes (CLOSE_REFUSED, with the reason: console.realtime.credentials) when what opened
    it ends, and when its user loses sight of anything it showed: the page then says so
    rather than keep rows its user may no longer see."""

    no_db_cleanup = frozenset({"domus.event"})  # see console.realtime.dispatch
    reaches: tuple[Reach, Reach] | None = None  # what it was showing by, since the last check

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not is_signed_in(user):
            await self.close()  # before accept: the handshake is refused with 403
            return
        self.reaches = await self._refresh()
        await self.join_group(EVENTS_GROUP)
        await self.accept()
        self.watch_credential()

    async def _refresh(self) -> tuple[Reach, Reach]:
        user = self.scope["user"]
        key = reach_key(user)
        if (cached := reach_cache.get(key)) is not None:
            return cached
        task = reach_cache.pending.get(key)
        if task is None:
            task = asyncio.create_task(_compute_reaches(user))
            reach_cache.pending[key] = task
        # Shielded: a socket closing while it waits must not cancel the others' computation.
        return await asyncio.shield(task)

    async def disconnect(self, code: int) -> None:
        await self.leave_groups()

    async def domus_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        if event.get("type") == ACCESS_CHANGED:
            reach_cache.invalidate()  # every socket of the process hears it; repeating is harmless
        if await self.ended_by(event):
            return
        if event.get("type") in (ACCESS_CHANGED, SESSION_ENDED):
            if event["type"] == ACCESS_CHANGED:
                await self._check_reach()
            return
        domains, hosts = await self._refresh()
        if may_see(event, domains, hosts, self.scope["user"].pk):
            await self.send_json(event)

    async def _check_reach(self) -> None:
        now = await self._refresh()
        before, self.reaches = self.reaches, now
        if before is not None and any(narrowed(b, a) for b, a in zip(before, now, strict=True)):
            await self.end_for("your access was changed")
