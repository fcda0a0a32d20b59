"""hostwatch: one event subscription per agent, in one asyncio process for many hosts.

It writes what agents report (host facts, domain states, liveness) to the database through the
services, which publish the matching events to browsers. A host silent for
DOMUS_HOST_OFFLINE_AFTER_SECONDS is marked offline; reconnects back off with jitter and reconcile
the full inventory. An agent whose certificate is not the pinned one is marked "identity
changed" and is sent nothing.

Heartbeats and periodic stats are frequent and carry no state change: they are collected in
memory and written by one flusher, in one statement per FLUSH_SECONDS for the whole shard,
rather than one write per host per heartbeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone
from pydantic import TypeAdapter, ValidationError

from agent.client import AgentClient, AgentError, AgentIdentityChanged, AgentNotFound
from agent.protocol import (
    AddressesEvent,
    AgentEvent,
    DomainEvent,
    DomainInfo,
    HeartbeatEvent,
    InventoryEvent,
    StatsEvent,
)
from domains.addresses import addresses_forgotten, domain_addresses_observed
from domains.models import Domain
from domains.services import OBSERVED_FIELDS, domain_observe, domain_vanished, domains_discovered, observed
from hosts.events import resources_changed
from hosts.models import Host
from hosts.services import host_observe, host_resources_observed

logger = logging.getLogger(__name__)

EVENT = TypeAdapter(AgentEvent)
# ORM work runs in one thread per process, with Django's connection upkeep around each call (a
# database restart costs one failed call, not the process).
db = database_sync_to_async
RESCAN_SECONDS = 3.0
MAX_BACKOFF_SECONDS = 10.0
FLUSH_SECONDS = 2.0


@dataclass(frozen=True)
class HostKey:
    """What a watcher depends on: a change restarts the watcher."""

    id: int
    name: str
    url: str
    secret: str
    fingerprint: str


def _reconcile(host_id: int, event: InventoryEvent) -> None:
    host = host_observe(host_id=host_id, state=Host.State.ONLINE, facts=event.host.model_dump(mode="json"))
    if host is None:
        return
    # One query for what we already know: after a reconnect most domains are unchanged, and
    # only the others pay for a locked read, a write and an event; what the host no longer
    # reports is what is left of it.
    known = {
        row[0]: (row[1], row[2:])
        for row in Domain.objects.filter(host=host).values_list("uuid", "pk", *OBSERVED_FIELDS)
    }
    new = []
    for info in event.domains:
        if (entry := known.pop(info.uuid, None)) is None:
            new.append(info)
        elif entry[1] != tuple(observed(info).values()):
            domain_observe(host=host, info=info)
    if new:
        domains_discovered(host=host, infos=new)
    for domain_id, _facts in known.values():
        domain_vanished(domain_id=domain_id)
    addresses_forgotten(host=host)  # the running ones' addresses follow the inventory


def _addresses_observed(host_id: int, event: AddressesEvent) -> None:
    host = Host.objects.filter(pk=host_id).first()
    if host is not None:
        domain_addresses_observed(host=host, event=event)


# Domain events after which the domain is read again from its agent.
# A start or a stop too: what was pending for the next boot (a disk attached to the definition
# only) is the running guest's now, or gone.
REREAD_ON = frozenset(
    {"defined", "started", "stopped", "device-added", "device-removed", "device-removal-failed"}
)


def _domain_defined(host_id: int, info: DomainInfo) -> None:
    host = Host.objects.filter(pk=host_id).first()
    if host is not None:
        domain_observe(host=host, info=info)


def _domain_changed(host_id: int, event: DomainEvent) -> None:
    host = Host.objects.filter(pk=host_id).first()
    if host is None:
        return
    if event.state is None:
        for domain_id in Domain.objects.filter(uuid=event.uuid, host=host).values_list("pk", flat=True):
            domain_vanished(domain_id=domain_id)
        return
    known = Domain.objects.filter(uuid=event.uuid).first()
    info = DomainInfo(
        uuid=event.uuid,
        name=event.name,
        state=event.state,
        vcpus=known.vcpus if known else 1,
        memory_mib=known.memory_mib if known else 0,
        autostart=known.autostart if known else False,  # lifecycle events do not carry these
        disks=known.disks if known else [],
        nics=known.nics if known else [],
    )
    domain_observe(host=host, info=info)


def _flush(seen: list[int], stats: dict[int, dict[str, Any]]) -> None:
    now = timezone.now()
    with transaction.atomic():
        if seen:
            # Only hosts still online: a host marked offline meanwhile stays offline.
            Host.objects.filter(pk__in=seen, state=Host.State.ONLINE).update(last_seen_at=now)
        if stats:
            rows = list(Host.objects.filter(pk__in=list(stats)).only("pk"))
            for row in rows:
                row.stats, row.stats_at = stats[row.pk], now
            Host.objects.bulk_update(rows, ["stats", "stats_at"])


class HostWatch:
    def __init__(self, *, shard: int = 0, shards: int = 1) -> None:
        self.shard, self.shards = shard, shards
        self.watchers: dict[HostKey, asyncio.Task[None]] = {}
        self.offline_after = settings.DOMUS_HOST_OFFLINE_AFTER_SECONDS
        self._seen: set[int] = set()  # heard from since the last flush
        self._stats: dict[int, dict[str, Any]] = {}
        self._resources: dict[int, dict[str, Any]] = {}  # each host's as last recorded here

    async def run(self) -> None:
        logger.info("hostwatch shard %d/%d started", self.shard, self.shards)
        flusher = asyncio.create_task(self._flusher(), name="flusher")
        try:
            await self._rescan_forever()
        finally:
            flusher.cancel()

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            seen, stats = list(self._seen), self._stats
            self._seen, self._stats = set(), {}
            if not seen and not stats:
                continue
            try:
                await db(_flush)(seen, stats)
            except DatabaseError:
                logger.exception("cannot record heartbeats of %d hosts", len(seen))

    async def _rescan_forever(self) -> None:
        while True:
            try:
                await self.rescan()
            except DatabaseError:
                logger.exception("hostwatch cannot read the host list; retrying")
            await asyncio.sleep(RESCAN_SECONDS)

    async def rescan(self) -> None:
        def hosts() -> list[HostKey]:
            rows = Host.objects.values_list("id", "name", "url", "secret", "fingerprint")
            return [HostKey(*row) for row in rows]

        wanted = {key for key in await db(hosts)() if key.id % self.shards == self.shard}
        for key, task in list(self.watchers.items()):
            if task.done():  # a watcher must never end; if one did, say why and start anew
                if not task.cancelled() and (exc := task.exception()) is not None:
                    logger.error("watcher of host %s died", key.name, exc_info=exc)
                del self.watchers[key]
        for key in set(self.watchers) - wanted:
            self.watchers.pop(key).cancel()
        for key in wanted - set(self.watchers):
            self.watchers[key] = asyncio.create_task(self.watch(key), name=f"watch-{key.name}")

    async def watch(self, key: HostKey) -> None:
        backoff = 0.5
        while True:
            state = Host.State.OFFLINE
            heard: list[bool] = []  # _follow appends once the agent has spoken
            try:
                await self._follow(key, heard)
                detail = "event stream closed by the agent"
            except AgentIdentityChanged as exc:
                state, detail = Host.State.IDENTITY_CHANGED, exc.detail
                backoff = MAX_BACKOFF_SECONDS
            except TimeoutError:  # before OSError, of which it is a subclass
                detail = f"no heartbeat for {self.offline_after:.0f} s"
            except (AgentError, aiohttp.ClientError, OSError) as exc:
                detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            except DatabaseError as exc:
                logger.exception("host %s: cannot record what it reports", key.name)
                detail = f"console database error: {exc}"
            if heard:  # it was up: come back quickly, not after the last long backoff
                backoff = 0.5
            logger.warning("host %s %s: %s", key.name, state, detail)
            try:
                await db(host_observe)(host_id=key.id, state=state, detail=detail[:255])
            except DatabaseError:
                logger.exception("host %s: cannot record that it is offline", key.name)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not crypto
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _follow(self, key: HostKey, heard: list[bool]) -> None:
        client = AgentClient(key.url, key.secret, fingerprint=key.fingerprint)
        async with client, client.events() as ws:
            while True:
                msg = await asyncio.wait_for(ws.receive(), timeout=self.offline_after)
                if not heard:
                    heard.append(True)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                try:
                    event = EVENT.validate_python(json.loads(msg.data))
                except (ValidationError, ValueError):
                    logger.warning("host %s sent an unreadable event: %.200s", key.name, msg.data)
                    continue
                try:
                    await self._apply(key, event, client)
                except DatabaseError:  # one event lost is better than the whole stream
                    logger.exception("host %s: cannot record %s", key.name, type(event).__name__)

    async def _apply(self, key: HostKey, event: object, client: AgentClient) -> None:
        if isinstance(event, InventoryEvent):
            logger.info("host %s online: %d domains", key.name, len(event.domains))
            await db(_reconcile)(key.id, event)
        elif isinstance(event, DomainEvent) and event.event in REREAD_ON and event.state is not None:
            # A new or changed definition, or a device plugged in or out (perhaps behind Domus's
            # back): the event carries no vCPUs, memory or disks, so read the domain once (rare,
            # unlike state changes; recording the disks last known instead would undo a disk
            # job's record that raced this event).
            # Bounded like the stream itself: an agent that froze right after sending the event
            # must still be marked offline in time, not after the client's long timeout.
            try:
                info = await asyncio.wait_for(client.get_domain(event.uuid), self.offline_after)
            except AgentNotFound:  # undefined again meanwhile: its own event follows
                return
            await db(_domain_defined)(key.id, info)
        elif isinstance(event, DomainEvent):
            await db(_domain_changed)(key.id, event)
        elif isinstance(event, StatsEvent):
            self._seen.add(key.id)
            stats = event.model_dump(mode="json", exclude={"type"})
            stats["received_at"] = time.time()  # the console's clock: see Host.resources
            self._stats[key.id] = stats
            resources = stats.get("resources")
            # A pool or network made, started, filled or removed (perhaps behind Domus's back):
            # recorded and told to the pages now, not at the next flush; the rest waits for it.
            if resources is not None and resources_changed(self._resources.get(key.id) or {}, resources):
                await db(host_resources_observed)(host_id=key.id, resources=resources)
                self._resources[key.id] = resources
        elif isinstance(event, AddressesEvent):
            await db(_addresses_observed)(key.id, event)
        elif isinstance(event, HeartbeatEvent):
            self._seen.add(key.id)
