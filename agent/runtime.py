"""Wiring of one running agent: config, libvirt connection, accel decision, services."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import libvirt

from agent import storage
from agent.accel import AccelDecision, AccelRequest, decide_accel
from agent.addresses import ARP_PATH, LEASE_DIR, AddressWatcher
from agent.capabilities import read_host_capabilities, read_host_resources
from agent.connection import LibvirtConnection
from agent.domains import DomainService
from agent.events import EventHub
from agent.hostfacts import Capabilities, domain_type_for, hypervisor_for, read_capabilities, read_host_facts
from agent.identity import AgentIdentity, ConsoleKeys
from agent.networks import NetworkService
from agent.pools import PoolService
from agent.protocol import HostCapabilities, HostFacts, HostResources, InventoryEvent, StatsEvent
from agent.uploads import DEFAULT_EXPIRY_S, UploadService
from agent.volumes import VolumeService

log = logging.getLogger(__name__)


def _pools_seen(resources: HostResources) -> list[tuple[object, ...]]:
    """What a person sees of the pools, without the byte counts that move on every reading."""
    return [
        (p.name, p.state, p.autostart, p.persistent, p.volume_count, [v.name for v in p.volumes])
        for p in resources.pools
    ]


@dataclass(frozen=True)
class AgentConfig:
    uri: str = "qemu:///system"
    listen: str = "127.0.0.1"
    port: int = 8901
    secret: str = ""  # a fixed console secret from the command line (loopback agents)
    state_dir: str | None = None  # certificate and paired consoles (see agent.identity)
    accel: AccelRequest = "auto"
    pool_path: str = "/var/lib/libvirt/images"
    probe_timeout_s: float = 180.0
    upload_expiry_s: float = DEFAULT_EXPIRY_S  # an upload untouched this long is removed


class AgentRuntime:
    """Everything a request handler needs; built once by `start()`."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.identity = AgentIdentity(config.state_dir) if config.state_dir else None
        self.keys = ConsoleKeys(self.identity, config.secret or None)
        self.conn = LibvirtConnection(config.uri)
        self.hub = EventHub()
        self.hub.inventory = self.inventory
        self.hub.stats = self.stats
        self.hub.pool_stats = self.pool_stats
        self.conn.on_disconnecting(self.hub.detach)
        self._host_caps: HostCapabilities | None = None
        self._caps: Capabilities | None = None
        self.decision: AccelDecision | None = None
        self.pool_dir: str = config.pool_path
        self._domains: DomainService | None = None
        self.pools = PoolService(self.conn, changed=self.hub.pools_changed)
        self.networks = NetworkService(self.conn, changed=self.hub.networks_changed, local=self._local)
        # A volume's bytes are its pool's: after a volume operation, fresh pools are published too.
        self.volumes = VolumeService(self.conn, changed=self._volumes_changed, local_files=self._local)
        self.uploads = UploadService(
            self.conn,
            changed=self.hub.pools_changed,
            local_files=self._local,
            expiry_s=config.upload_expiry_s,
        )
        self._last_resources: HostResources | None = None
        # Guests' addresses: the lease files and the neighbour table are this machine's only when
        # libvirt is (not for the test driver, whose leases are none and whose guests are not here).
        local = self._local
        self.addresses = AddressWatcher(
            self.conn,
            self.hub,
            lease_dir=LEASE_DIR if local else None,
            arp_path=ARP_PATH if local else None,
        )

    def _volumes_changed(self) -> None:
        self.hub.pools_changed()
        if self._domains is not None:  # a disk grown through its volume: the domains' sizes too
            self._domains.invalidate(None)

    @property
    def domains(self) -> DomainService:
        if self._domains is None:
            raise RuntimeError("agent runtime not started")
        return self._domains

    async def _on_connected(self, conn: libvirt.virConnect) -> None:
        # Runs on every (re)connection: pool, capabilities and event registration.
        self.pool_dir = await asyncio.to_thread(storage.ensure_default_pool, conn, self.config.pool_path)
        self._caps = caps = await asyncio.to_thread(read_capabilities, conn)
        if self.decision is not None:
            self._host_caps = await asyncio.to_thread(
                read_host_capabilities, conn, accel=self.decision.accel, caps_xml=caps.xml
            )
        await self.hub.attach(conn)
        if self._domains is not None:
            self._domains.invalidate(None)
        self.addresses.reconnected()

    async def start(self) -> None:
        if self.identity is not None:
            for fixed in self.identity.private_check():
                log.warning("%s", fixed)
        self.conn.on_connected(self._on_connected)
        await self.conn.open()
        caps = self._caps
        assert caps is not None
        self.decision = await decide_accel(
            self.conn.get(),
            caps,
            self.config.accel,
            work_dir=self.pool_dir,
            timeout_s=self.config.probe_timeout_s,
        )
        log.info("accelerator: %s (%s)", self.decision.accel, self.decision.reason)
        await self._describe_capabilities()
        hypervisor = hypervisor_for(caps.driver, self.decision.accel)
        self._domains = DomainService(
            self.conn,
            domain_type=domain_type_for(hypervisor),
            default_pool_dir=self.pool_dir,
            local_files=hypervisor != "test",
            arch=caps.arch,
        )
        self.hub.add_listener(self._domains.invalidate)
        self.hub.start()
        self.addresses.start()
        self.uploads.start()

    async def stop(self) -> None:
        await self.uploads.stop()
        await self.addresses.stop()
        await self.hub.stop()
        await self.conn.close()

    async def refresh_capabilities(self) -> None:
        """Re-read capabilities (after a hypervisor upgrade, say); resources are always live."""
        self._caps = await self.conn.call(read_capabilities, what="reading capabilities")
        await self._describe_capabilities()

    async def _describe_capabilities(self) -> None:
        """What the console shows of the capabilities just read (plus domain capabilities)."""
        caps, decision = self._caps, self.decision
        if caps is None or decision is None:
            return
        accel = decision.accel
        self._host_caps = await self.conn.call(
            lambda conn: read_host_capabilities(conn, accel=accel, caps_xml=caps.xml),
            what="reading domain capabilities",
        )

    @property
    def _local(self) -> bool:
        """Whether this machine's own bridges are the hypervisor's (not so for the test driver)."""
        return not self.config.uri.startswith("test:")

    async def resources(self, *, refresh_pools: bool = True) -> HostResources:
        local = self._local
        resources = await self.conn.call(
            lambda conn: read_host_resources(conn, local=local, refresh_pools=refresh_pools),
            what="reading pools and networks",
        )
        self._last_resources = resources
        return resources

    async def stats(self, resources: HostResources | None = None) -> StatsEvent:
        domains = await self.domains.list()
        free = await self.conn.call(lambda conn: int(conn.getFreeMemory()), what="reading free memory")
        return StatsEvent(
            ts=time.time(),
            free_memory_mib=free // (1024 * 1024),
            domains_total=len(domains),
            domains_running=sum(1 for d in domains if d.state == "running"),
            resources=resources if resources is not None else await self.resources(),
        )

    async def pool_stats(self, refreshed_only: bool) -> StatsEvent | None:
        """Stats after storage pool events, read without refreshing pools (each refresh is an
        event). After refreshes alone, None unless what people see of the pools changed: the
        agent's own readings refresh pools, and their echo must not be published forever."""
        previous = self._last_resources
        resources = await self.resources(refresh_pools=False)
        if refreshed_only and previous is not None and _pools_seen(previous) == _pools_seen(resources):
            return None
        return await self.stats(resources)

    async def host_facts(self) -> HostFacts:
        caps, decision = self._caps, self.decision
        if caps is None or decision is None:
            raise RuntimeError("agent runtime not started")

        def run(conn: libvirt.virConnect) -> HostFacts:
            return read_host_facts(
                conn,
                caps=caps,
                uri=self.config.uri,
                accel=decision.accel,
                kvm_usable=decision.kvm_usable,
                pool_path=self.pool_dir,
            )

        facts = await self.conn.call(run, what="reading host facts")
        facts.capabilities = self._host_caps
        facts.resources = await self.resources()
        return facts

    async def inventory(self) -> InventoryEvent:
        return InventoryEvent(host=await self.host_facts(), domains=await self.domains.list())
