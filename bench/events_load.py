"""Browser event sockets and domain state changes on agents, with the time from each agent call to
the matching `domain.state` event on every socket.

One change is in flight per domain at a time, so an event is matched by (domain uuid, expected
state). A change's latency is that of its slowest socket; deliveries missing `deadline_s` after the
call are lost (those that still come later are counted as late too).

Two taps split the path into stages: `AgentTap` holds its own /v1/events socket to every agent
(when the agent sent the event), `PublishTap` subscribes to the Channels group on Redis (when
hostwatch published it, i.e. after its database write). All clocks are this process' monotonic one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.procstats import summary_ms

PROBE_PREFIX = "bench-probe-"


@dataclass
class Change:
    seq: int
    host: str
    uuid: str
    action: str  # destroy | start
    expect: str  # the state the browsers should be told: shutoff | running
    t0: float = 0.0  # monotonic, just before the agent call
    call_s: float | None = None
    error: str | None = None
    arrivals: dict[int, float] = field(default_factory=dict)  # socket -> seconds after t0
    late: dict[int, float] = field(default_factory=dict)  # arrivals after the deadline
    stages: dict[str, float] = field(default_factory=dict)  # tap -> seconds after t0
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class SocketStats:
    messages: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    unmatched_domain_events: int = 0  # domain.state for a domain with no change in flight


class EventSockets:
    """`count` logged-in `/ws/events/` clients of one console, read in this process."""

    def __init__(self, base_url: str, session_keys: Sequence[str]) -> None:
        self.ws_url = base_url.replace("http://", "ws://", 1) + "/ws/events/"
        self.origin = base_url
        self.session_keys = list(session_keys)
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.stats = SocketStats()
        self.pending: dict[str, Change] = {}  # uuid -> the change in flight
        self.finished: dict[str, Change] = {}  # uuid -> its last change, for late arrivals
        self.probes: dict[str, set[int]] = {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def count(self) -> int:
        return len(self.session_keys)

    async def open(self, *, concurrency: int = 10) -> None:
        # Unlimited connector: the default pool of 100 would queue the 101st socket for ever.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        gate = asyncio.Semaphore(concurrency)

        async def connect(key: str) -> aiohttp.ClientWebSocketResponse:
            async with gate:
                assert self._session is not None
                return await self._session.ws_connect(
                    self.ws_url,
                    headers={"Cookie": f"sessionid={key}", "Origin": self.origin},
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                    max_msg_size=4 * 1024 * 1024,
                )

        self.sockets = list(await asyncio.gather(*(connect(key) for key in self.session_keys)))
        self.readers = [
            asyncio.create_task(self._read(i, ws), name=f"socket-{i}") for i, ws in enumerate(self.sockets)
        ]

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _read(self, index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.monotonic()
            self._on_event(index, json.loads(msg.data), now)
        self.stats.disconnects += 1

    def _on_event(self, index: int, event: dict[str, Any], now: float) -> None:
        kind = str(event.get("type", "?"))
        self.stats.messages[kind] += 1
        if kind == "host.state" and str(event["host"]["name"]).startswith(PROBE_PREFIX):
            self.probes.setdefault(event["host"]["name"], set()).add(index)
            return
        if kind != "domain.state":
            return
        uuid, state = event["domain"]["uuid"], event["domain"]["state"]
        change = self.pending.get(uuid)
        if change is not None and change.expect == state:
            if index not in change.arrivals:
                change.arrivals[index] = now - change.t0
                if len(change.arrivals) == self.count:
                    change.done.set()
            return
        last = self.finished.get(uuid)
        if last is not None and last.expect == state and index not in last.arrivals:
            last.late.setdefault(index, now - last.t0)
            return
        self.stats.unmatched_domain_events += 1

    async def wait_subscribed(self, host_id: int, timeout: float = 30.0) -> float:
        """Publish probe events until one reaches every socket (the pub/sub layer subscribes a
        socket's group in the background after the handshake); returns the seconds it took."""
        from console.realtime.events import apublish

        started = time.monotonic()
        n = 0
        while time.monotonic() - started < timeout:
            name = f"{PROBE_PREFIX}{n}"
            n += 1
            self.probes[name] = set()
            await apublish(
                {
                    "type": "host.state",
                    "host": {"id": host_id, "name": name, "state": "online", "detail": "", "teams": []},
                }
            )
            for _ in range(20):
                await asyncio.sleep(0.05)
                if len(self.probes[name]) == self.count:
                    return time.monotonic() - started
        raise TimeoutError(
            f"after {timeout:.0f} s only {max(map(len, self.probes.values()), default=0)} of "
            f"{self.count} sockets receive events"
        )

    def on_stage(self, stage: str, uuid: str, state: str | None, now: float) -> None:
        """A tap saw the event of a change in flight."""
        change = self.pending.get(uuid)
        if change is not None and change.expect == state and stage not in change.stages:
            change.stages[stage] = now - change.t0

    def reset_counters(self) -> SocketStats:
        stats, self.stats = self.stats, SocketStats()
        self.stats.disconnects = stats.disconnects
        return stats


class AgentTap:
    """One extra /v1/events subscriber per agent: when each agent sent each domain event."""

    STAGE = "agent_event"

    def __init__(self, agents: Sequence[tuple[str, str]], sockets: EventSockets) -> None:
        self.agents = list(agents)  # (url, secret)
        self.sockets = sockets
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, *, concurrency: int = 20) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        gate = asyncio.Semaphore(concurrency)

        async def connect(url: str, secret: str) -> aiohttp.ClientWebSocketResponse:
            async with gate:
                assert self._session is not None
                return await self._session.ws_connect(
                    url + "/v1/events",
                    headers={"Authorization": f"Bearer {secret}"},
                    max_msg_size=64 * 1024 * 1024,
                )

        sockets = await asyncio.gather(*(connect(url, secret) for url, secret in self.agents))
        self._tasks = [asyncio.create_task(self._read(ws)) for ws in sockets]

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT or not msg.data.startswith('{"type":"domain"'):
                    continue
                now = time.monotonic()
                event = json.loads(msg.data)
                self.sockets.on_stage(self.STAGE, event["uuid"], event["state"], now)
        finally:
            await ws.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


class PublishTap:
    """A subscriber of the browsers' Channels group on Redis: when hostwatch published each event."""

    STAGE = "published"

    def __init__(self, sockets: EventSockets) -> None:
        self.sockets = sockets
        self._task: asyncio.Task[None] | None = None
        self._redis: Any = None

    async def open(self) -> None:
        import redis.asyncio
        from channels.layers import get_channel_layer
        from django.conf import settings

        from console.realtime.events import EVENTS_GROUP

        layer = get_channel_layer()
        # channels_redis.pubsub names a group's Redis channel "<prefix>__group__<group>".
        channel = f"{settings.DOMUS_REDIS_PREFIX}__group__{EVENTS_GROUP}"
        self._redis = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(channel)

        async def read() -> None:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                now = time.monotonic()
                event = layer.deserialize(message["data"]).get("event", {})
                if event.get("type") == "domain.state":
                    domain = event["domain"]
                    self.sockets.on_stage(self.STAGE, domain["uuid"], domain["state"], now)

        self._task = asyncio.create_task(read())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()


@dataclass
class AgentDomains:
    """One agent's domains and what this benchmark believes their state is."""

    name: str
    url: str
    secret: str
    domains: list[tuple[str, bool]]  # (uuid, running)
    cursor: int = 0


class ChangeDriver:
    """Issues destroy/start calls at a steady rate, round-robin over agents, and waits for the
    browsers to hear about each."""

    def __init__(self, agents: Sequence[AgentDomains], sockets: EventSockets, *, deadline_s: float) -> None:
        self.agents = list(agents)
        self.sockets = sockets
        self.deadline_s = deadline_s
        self.changes: list[Change] = []

    def _pick(self, agent: AgentDomains) -> tuple[int, str, bool] | None:
        for _ in range(len(agent.domains)):
            j = agent.cursor
            agent.cursor = (agent.cursor + 1) % len(agent.domains)
            uuid, running = agent.domains[j]
            if uuid not in self.sockets.pending:
                return j, uuid, running
        return None

    async def run(self, count: int, rate: float) -> list[Change]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks: list[asyncio.Task[None]] = []
            started = time.monotonic()
            for seq in range(count):
                delay = started + seq / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                agent = self.agents[seq % len(self.agents)]
                picked = self._pick(agent)
                if picked is None:
                    continue  # every domain of this agent busy: skip this slot
                j, uuid, running = picked
                change = Change(
                    seq=seq,
                    host=agent.name,
                    uuid=uuid,
                    action="destroy" if running else "start",
                    expect="shutoff" if running else "running",
                )
                self.changes.append(change)
                tasks.append(asyncio.create_task(self._one(session, agent, j, change)))
            await asyncio.gather(*tasks)
        return self.changes

    async def _one(self, session: aiohttp.ClientSession, agent: AgentDomains, j: int, change: Change) -> None:
        self.sockets.pending[change.uuid] = change
        url = f"{agent.url}/v1/domains/{change.uuid}/{change.action}"
        headers = {"Authorization": f"Bearer {agent.secret}"}
        change.t0 = time.monotonic()
        try:
            async with session.post(url, headers=headers) as resp:
                body = await resp.text()
                change.call_s = time.monotonic() - change.t0
                if resp.status != 200:
                    change.error = f"HTTP {resp.status}: {body[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            change.error = f"{type(exc).__name__}: {exc}"
        if change.error is None:
            agent.domains[j] = (change.uuid, change.expect == "running")
            try:
                await asyncio.wait_for(change.done.wait(), self.deadline_s - (time.monotonic() - change.t0))
            except TimeoutError:
                pass
        del self.sockets.pending[change.uuid]
        self.sockets.finished[change.uuid] = change


def change_records(changes: Sequence[Change], started: float) -> list[dict[str, Any]]:
    """One line per change (for plotting or finding patterns): offsets in ms."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return [
        {
            "seq": c.seq,
            "host": c.host,
            "action": c.action,
            "at_ms": ms(c.t0 - started),
            "call_ms": ms(c.call_s),
            "error": c.error,
            **{f"{name}_ms": ms(value) for name, value in c.stages.items()},
            "first_ms": ms(min(c.arrivals.values())) if c.arrivals else None,
            "last_ms": ms(max(c.arrivals.values())) if c.arrivals else None,
            "delivered": len(c.arrivals),
            "late": len(c.late),
        }
        for c in changes
    ]


def change_report(changes: Sequence[Change], sockets: int) -> dict[str, Any]:
    """Latency (all sockets, first socket, every delivery), losses and agent call times."""
    ok = [c for c in changes if c.error is None]
    complete = [c for c in ok if len(c.arrivals) == sockets]
    lost = sum(sockets - len(c.arrivals) for c in ok)
    late = sum(len(c.late) for c in ok)
    never = sum(sockets - len(c.arrivals) - len(c.late) for c in ok)

    def stage(name: str) -> list[float]:
        return [c.stages[name] for c in ok if name in c.stages]

    def between(first: str, then: str) -> list[float]:
        return [c.stages[then] - c.stages[first] for c in ok if first in c.stages and then in c.stages]

    agent, published = AgentTap.STAGE, PublishTap.STAGE
    first_socket = [
        min(c.arrivals.values()) - c.stages[published] for c in ok if c.arrivals and published in c.stages
    ]
    fan_out = [max(c.arrivals.values()) - min(c.arrivals.values()) for c in complete]
    return {
        "changes": len(changes),
        "agent_call_errors": len(changes) - len(ok),
        "errors_sample": [c.error for c in changes if c.error][:5],
        "expected_deliveries": len(ok) * sockets,
        "lost_deliveries": lost,  # not there within the deadline
        "late_deliveries": late,  # of those, came later after all
        "never_delivered": never,
        "changes_incomplete": len(ok) - len(complete),
        "latency_all_sockets": summary_ms([max(c.arrivals.values()) for c in complete]),
        "latency_first_socket": summary_ms([min(c.arrivals.values()) for c in ok if c.arrivals]),
        "latency_per_delivery": summary_ms([t for c in ok for t in c.arrivals.values()]),
        "agent_call": summary_ms([c.call_s for c in ok if c.call_s is not None]),
        # Where the time goes, stage by stage (only when the taps ran):
        "stage_call_to_agent_event": summary_ms(stage(agent)),  # libvirt -> agent -> its socket
        "stage_agent_event_to_published": summary_ms(between(agent, published)),  # hostwatch
        "stage_published_to_first_socket": summary_ms(first_socket),  # Redis -> uvicorn -> browser
        "stage_first_to_last_socket": summary_ms(fan_out),  # the fan-out to every socket
    }
