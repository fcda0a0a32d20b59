"""Event hub: libvirt lifecycle events fanned out to every /v1/events subscriber.

Each subscriber has a bounded queue; a subscriber whose queue is full is dropped (it gets a
`None` sentinel and its socket is closed), so one slow reader never blocks the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import libvirt
from pydantic import BaseModel

from agent.errors import AgentProblem
from agent.protocol import DomainEvent, DomainState, HeartbeatEvent, InventoryEvent, StatsEvent

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
STATS_EVERY_S = 10.0
SUBSCRIBER_QUEUE = 256

LIFECYCLE_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}

STATE_NAMES: dict[int, DomainState] = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

# The state a lifecycle event implies; other events (defined, undefined, shutdown) are
# followed by a state lookup, since the domain may be running or not.
IMPLIED_STATE: dict[int, DomainState] = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: "running",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "running",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "paused",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "shutoff",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
}

DomainListener = Callable[[DomainEvent], None]
InventoryProvider = Callable[[], Awaitable[InventoryEvent]]
StatsProvider = Callable[[], Awaitable[StatsEvent]]


class Subscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self.dropped = False

    def offer(self, message: str) -> bool:
        """Queue a message; False (and the subscriber marked dropped) when it is full."""
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.dropped = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)
            return False


def _state(dom: libvirt.virDomain) -> DomainState | None:
    try:
        state, _reason = dom.state()
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise
    return STATE_NAMES.get(state, "nostate")


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._listeners: set[DomainListener] = set()
        self._raw: asyncio.Queue[tuple[libvirt.virDomain, int]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._callback_id: int | None = None
        self.inventory: InventoryProvider | None = None
        self.stats: StatsProvider | None = None

    # -- subscribers -------------------------------------------------------------------------
    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def add_listener(self, listener: DomainListener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: DomainListener) -> None:
        self._listeners.discard(listener)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: BaseModel) -> None:
        message = event.model_dump_json()
        for sub in list(self._subscribers):
            if not sub.offer(message):
                log.warning("dropping a slow events subscriber (queue full)")
                self._subscribers.discard(sub)

    # -- libvirt side ------------------------------------------------------------------------
    async def attach(self, conn: libvirt.virConnect) -> None:
        """Register for lifecycle events on a (new) connection; a hook of LibvirtConnection."""
        self._callback_id = await asyncio.to_thread(
            conn.domainEventRegisterAny,
            None,
            libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            self._on_lifecycle,
            None,
        )
        if self._subscribers and self.inventory is not None:
            # After a reconnect, events may have been missed: resend the whole picture.
            asyncio.get_running_loop().create_task(self._resend_inventory())

    async def _resend_inventory(self) -> None:
        if self.inventory is not None:
            self.publish(await self.inventory())

    def _on_lifecycle(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, _detail: int, _o: object
    ) -> None:
        # Runs on the event loop (libvirtaio): no blocking call here, just hand over.
        self._raw.put_nowait((dom, event))

    async def _translate(self) -> None:
        """Turn raw callbacks into DomainEvents, in order, looking up the current state."""
        while True:
            dom, event = await self._raw.get()
            name = LIFECYCLE_NAMES.get(event, f"event-{event}")
            state = IMPLIED_STATE.get(event)
            # A transient domain no longer exists once stopped: the lookup then says None.
            if state is None or event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
                try:
                    state = await asyncio.to_thread(_state, dom)
                except libvirt.libvirtError as err:
                    log.warning("state of %s after %s: %s", dom.name(), name, err)
            domain_event = DomainEvent(
                uuid=uuid.UUID(dom.UUIDString()), name=dom.name(), event=name, state=state
            )
            log.info("event %s %s -> %s", domain_event.name, name, state)
            for listener in list(self._listeners):
                listener(domain_event)
            self.publish(domain_event)

    async def _heartbeat(self) -> None:
        next_stats = time.monotonic() + STATS_EVERY_S
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self.publish(HeartbeatEvent(ts=time.time()))
            if self.stats is not None and self._subscribers and time.monotonic() >= next_stats:
                next_stats = time.monotonic() + STATS_EVERY_S
                try:
                    self.publish(await self.stats())
                except AgentProblem:  # a failed reading must not stop the heartbeat
                    log.warning("cannot read host stats", exc_info=True)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._translate()), loop.create_task(self._heartbeat())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in list(self._subscribers):
            if not sub.queue.full():
                sub.queue.put_nowait(None)
        self._subscribers.clear()
