"""Event hub: libvirt lifecycle events fanned out to every /v1/events subscriber, with heartbeats,
periodic stats, and fresh resources soon after a storage pool or a virtual network changes.
Listeners inside the agent hear of domain, network and guest agent events too (the domain cache,
the address watcher), and may add events that follow the inventory a subscriber starts from.

Each subscriber has a bounded queue; a subscriber whose queue is full is dropped (it gets a
`None` sentinel and its socket is closed), so one slow reader never blocks the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import libvirt
from pydantic import BaseModel

from agent.errors import AgentProblem, is_connection_lost
from agent.protocol import DomainEvent, DomainState, HeartbeatEvent, InventoryEvent, StatsEvent

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
STATS_EVERY_S = 10.0
SUBSCRIBER_QUEUE = 256
# A storage pool or network event is answered by fresh resources this long after it; the events
# that come meanwhile (a define, build, start and autostart in one go) share that one reading.
POOL_DEBOUNCE_S = 0.5

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

# Device events (a disk hot-plugged, released by the guest, or not released): the domain's disks
# changed while its lifecycle did not. Published as DomainEvents of these names.
DEVICE_EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED: "device-added",
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED: "device-removed",
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED: "device-removal-failed",
}

POOL_EVENT_NAMES = {
    libvirt.VIR_STORAGE_POOL_EVENT_DEFINED: "defined",
    libvirt.VIR_STORAGE_POOL_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_STORAGE_POOL_EVENT_STARTED: "started",
    libvirt.VIR_STORAGE_POOL_EVENT_STOPPED: "stopped",
    libvirt.VIR_STORAGE_POOL_EVENT_CREATED: "built",
    libvirt.VIR_STORAGE_POOL_EVENT_DELETED: "storage deleted",
}

NETWORK_EVENT_NAMES = {
    libvirt.VIR_NETWORK_EVENT_DEFINED: "defined",
    libvirt.VIR_NETWORK_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_NETWORK_EVENT_STARTED: "started",
    libvirt.VIR_NETWORK_EVENT_STOPPED: "stopped",
}

DomainListener = Callable[[DomainEvent], None]
# A network's name and what happened to it (NETWORK_EVENT_NAMES).
NetworkListener = Callable[[str, str], None]
# A domain's uuid and whether its guest agent is now connected (False: disconnected).
GuestAgentListener = Callable[[uuid.UUID, bool], None]
# Events that complete the picture an inventory gives (every domain's addresses), sent right after it.
InventoryFollowers = Callable[[], Sequence[BaseModel]]
InventoryProvider = Callable[[], Awaitable[InventoryEvent]]
StatsProvider = Callable[[], Awaitable[StatsEvent]]
# Fresh figures after storage pool events; the argument says that they were only refreshes
# (which the agent's own readings cause), and then None means "nothing a person would see changed".
PoolStatsProvider = Callable[[bool], Awaitable[StatsEvent | None]]


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
        self._network_listeners: set[NetworkListener] = set()
        self._agent_listeners: set[GuestAgentListener] = set()
        # (domain, event name, the state it implies or None to look it up), in libvirt's order.
        self._raw: asyncio.Queue[tuple[libvirt.virDomain, str, DomainState | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        # (connection, "domain", "pool" or "network", callback id) of every registration, to undo them.
        self._registrations: list[tuple[libvirt.virConnect, str, int]] = []
        self.inventory: InventoryProvider | None = None
        self.followers: InventoryFollowers | None = None
        self.stats: StatsProvider | None = None
        self.pool_stats: PoolStatsProvider | None = None
        self.pool_debounce_s = POOL_DEBOUNCE_S
        self._pools_task: asyncio.Task[None] | None = None
        self._pools_dirty = False
        self._pools_changed = False  # a lifecycle event or an operation in the batch, not only refreshes
        self._changed_kinds: set[str] = set()  # "storage pool", "network": what the batch is about

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

    def add_network_listener(self, listener: NetworkListener) -> None:
        self._network_listeners.add(listener)

    def add_guest_agent_listener(self, listener: GuestAgentListener) -> None:
        self._agent_listeners.add(listener)

    def inventory_followers(self) -> Sequence[BaseModel]:
        """What a subscriber gets right after an inventory (none when nobody adds any)."""
        return self.followers() if self.followers is not None else []

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
        """Register for domain lifecycle, storage pool and network events on a (new) connection; a hook
        of LibvirtConnection (`detach` undoes it before the connection is closed)."""
        await asyncio.to_thread(self._register, conn)
        if self._subscribers and self.inventory is not None:
            # After a reconnect, events may have been missed: resend the whole picture.
            asyncio.get_running_loop().create_task(self._resend_inventory())

    def _register(self, conn: libvirt.virConnect) -> None:
        domain_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
        )
        self._registrations.append((conn, "domain", domain_id))
        for event_id in DEVICE_EVENT_NAMES:
            try:
                device_id = conn.domainEventRegisterAny(None, event_id, self._on_device, event_id)
            except libvirt.libvirtError as err:
                if is_connection_lost(err):
                    raise
                log.warning("no domain device events from libvirt: %s", err.get_error_message() or err)
                break
            self._registrations.append((conn, "domain", device_id))
        try:
            agent_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, self._on_guest_agent, None
            )
        except libvirt.libvirtError as err:
            if is_connection_lost(err):
                raise
            # A driver without guest agents (Xen): addresses come from the other sources only.
            log.info("no guest agent events from libvirt: %s", err.get_error_message() or err)
        else:
            self._registrations.append((conn, "domain", agent_id))
        pool_callbacks = (
            (libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, self._on_pool_lifecycle),
            (libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH, self._on_pool_refresh),
        )
        for event_id, callback in pool_callbacks:
            try:
                pool_id = conn.storagePoolEventRegisterAny(None, event_id, callback, None)
            except libvirt.libvirtError as err:
                if is_connection_lost(err):
                    raise
                # A driver without storage events: pool changes then show in the periodic stats.
                log.warning("no storage pool events from libvirt: %s", err.get_error_message() or err)
                break
            self._registrations.append((conn, "pool", pool_id))
        try:
            network_id = conn.networkEventRegisterAny(
                None, libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE, self._on_network_lifecycle, None
            )
        except libvirt.libvirtError as err:
            if is_connection_lost(err):
                raise
            # A driver without network events: network changes then show in the periodic stats.
            log.warning("no network events from libvirt: %s", err.get_error_message() or err)
            return
        self._registrations.append((conn, "network", network_id))

    def detach(self, conn: libvirt.virConnect) -> None:
        """Blocking: deregister `conn`'s callbacks before it is closed (a registered callback holds
        a reference that keeps a closed connection alive). Errors of a dead connection are moot."""
        mine = [r for r in self._registrations if r[0] is conn]
        self._registrations = [r for r in self._registrations if r[0] is not conn]
        for _conn, kind, callback_id in mine:
            with contextlib.suppress(libvirt.libvirtError):
                if kind == "domain":
                    conn.domainEventDeregisterAny(callback_id)
                elif kind == "pool":
                    conn.storagePoolEventDeregisterAny(callback_id)
                else:
                    conn.networkEventDeregisterAny(callback_id)

    async def _resend_inventory(self) -> None:
        if self.inventory is not None:
            self.publish(await self.inventory())
            for event in self.inventory_followers():
                self.publish(event)

    def _on_lifecycle(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, _detail: int, _o: object
    ) -> None:
        # Runs on the event loop (libvirtaio): no blocking call here, just hand over.
        state = IMPLIED_STATE.get(event)
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            state = None  # a transient domain no longer exists once stopped: the lookup says None
        self._raw.put_nowait((dom, LIFECYCLE_NAMES.get(event, f"event-{event}"), state))

    def _on_guest_agent(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, state: int, _reason: int, _o: object
    ) -> None:
        # On the event loop: UUIDString() is the handle's own, no libvirt call.
        connected = state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
        log.debug("guest agent of %s %s", dom.name(), "connected" if connected else "disconnected")
        domain_uuid = uuid.UUID(dom.UUIDString())
        for listener in list(self._agent_listeners):
            listener(domain_uuid, connected)

    def _on_device(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, _alias: str, event_id: int
    ) -> None:
        self._raw.put_nowait((dom, DEVICE_EVENT_NAMES[event_id], None))

    async def _translate(self) -> None:
        """Turn raw callbacks into DomainEvents, in order, looking up the current state."""
        while True:
            dom, name, state = await self._raw.get()
            if state is None:
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

    # -- storage pools ---------------------------------------------------------------------
    def _on_pool_lifecycle(
        self, _conn: libvirt.virConnect, pool: libvirt.virStoragePool, event: int, _detail: int, _o: object
    ) -> None:
        # On the event loop, like _on_lifecycle: name() is the handle's own, no libvirt call.
        log.info("storage pool %s %s", pool.name(), POOL_EVENT_NAMES.get(event, f"event-{event}"))
        self.pools_changed()

    def _on_pool_refresh(self, _conn: libvirt.virConnect, _pool: libvirt.virStoragePool, _o: object) -> None:
        self.pools_changed(refreshed_only=True)

    # -- networks --------------------------------------------------------------------------
    def _on_network_lifecycle(
        self, _conn: libvirt.virConnect, network: libvirt.virNetwork, event: int, _detail: int, _o: object
    ) -> None:
        # On the event loop, like _on_lifecycle: name() is the handle's own, no libvirt call.
        name, happened = str(network.name()), NETWORK_EVENT_NAMES.get(event, f"event-{event}")
        log.info("network %s %s", name, happened)
        for listener in list(self._network_listeners):
            listener(name, happened)
        self.networks_changed()

    def networks_changed(self) -> None:
        """Networks changed (an event, or an operation of the API): fresh resources follow, as
        after a storage pool change (one reading for both when they come together)."""
        self._resources_changed("network", refreshed_only=False)

    def pools_changed(self, *, refreshed_only: bool = False) -> None:
        """Storage pools changed (an event, or an operation of the API): subscribers get a
        StatsEvent with fresh resources once things settle (POOL_DEBOUNCE_S). Non-blocking."""
        self._resources_changed("storage pool", refreshed_only=refreshed_only)

    def _resources_changed(self, kind: str, *, refreshed_only: bool) -> None:
        self._pools_dirty = True
        self._changed_kinds.add(kind)
        if not refreshed_only:
            self._pools_changed = True
        if self._pools_task is None or self._pools_task.done():
            self._pools_task = asyncio.get_running_loop().create_task(self._publish_pools())

    async def _publish_pools(self) -> None:
        while self._pools_dirty:  # again if more came while the last reading was under way
            await asyncio.sleep(self.pool_debounce_s)
            refreshed_only = not self._pools_changed
            kinds = sorted(self._changed_kinds, reverse=True)  # storage pool, network
            self._pools_dirty = self._pools_changed = False
            self._changed_kinds.clear()
            if not self._subscribers or self.pool_stats is None:
                continue  # nobody listens: an inventory will tell the next one
            try:
                event = await self.pool_stats(refreshed_only)
            except AgentProblem:
                log.warning("cannot read host resources after a %s change", " or ".join(kinds), exc_info=True)
                continue
            if event is not None:
                self.publish(event)
                for kind in kinds:  # a line for each: what follows the changes of a kind is found by it
                    log.info("published fresh resources after %s changes", kind)

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
        pools_task = self._pools_task
        tasks = [*self._tasks, *([pools_task] if pools_task is not None and not pools_task.done() else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in list(self._subscribers):
            if not sub.queue.full():
                sub.queue.put_nowait(None)
        self._subscribers.clear()
