"""Domain operations (list, define, start, shutdown, destroy, delete) on the libvirt connection.

Blocking libvirt work happens in `_..._sync` functions run through `LibvirtConnection.call`;
the parsed static part of each domain (its XML) is cached per uuid and invalidated by
lifecycle events, so listing is one `getAllDomainStats` call in the steady state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid as uuid_mod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import libvirt
from lxml import etree

from agent import domain_disks, domain_nics, netinstall, netxml, storage
from agent.connection import LibvirtConnection
from agent.diskxml import with_pending
from agent.domxml import (
    Capacity,
    install_pending,
    install_xml,
    installed_xml,
    parse_disks,
    render_domain_xml,
    stored_spec,
)
from agent.errors import Conflict, NotFound
from agent.events import STATE_NAMES
from agent.protocol import (
    DeleteResult,
    DiskAttachRequest,
    DiskChange,
    DiskInfo,
    DomainEvent,
    DomainInfo,
    DomainSpec,
    NetworkInstall,
    NicAttachRequest,
    NicChangeRequest,
    NicInfo,
    NicOutcome,
    ResourcesRequest,
    ResourcesResult,
)

log = logging.getLogger(__name__)

_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)
_MEMORY_UNITS = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "m": 1024, "mib": 1024}
# How long a detach waits for the running guest to release the disk or card (libvirt's own wait
# included).
DETACH_WAIT_S = 10.0
_DETACH_POLL_S = 0.25


Notes = list[str]  # (inside DomainService, `list` is its method)
Applied = Literal["now", "next boot"]


@dataclass(frozen=True)
class _StaticInfo:
    name: str
    vcpus: int
    memory_mib: int
    persistent: bool
    autostart: bool
    disks: list[DiskInfo]
    nics: list[NicInfo]
    running: bool  # read from a running domain's live definition (its disks then show what is pending)
    # The DomainInfo for each state seen, built once: listing 1,000 domains is then one bulk
    # libvirt call and dictionary lookups, not 1,000 pydantic validations.
    by_state: dict[str, DomainInfo] = field(default_factory=dict)


def _static_info(dom: libvirt.virDomain, capacity: Capacity | None = None) -> _StaticInfo:
    """A domain's static part. The disks and cards of a running domain with a definition for its
    next boot are marked with what that definition changes (a shut-off domain has nothing
    pending): one more XMLDesc, for both."""
    xml = dom.XMLDesc(0)
    root = etree.fromstring(xml.encode())
    running = root.get("id") is not None  # no id: not running
    vcpu = root.find("vcpu")
    vcpus = int((vcpu.get("current") or vcpu.text or "1") if vcpu is not None else "1")
    memory = root.find("memory")
    kib = 0.0
    if memory is not None and memory.text:
        kib = int(memory.text) * _MEMORY_UNITS.get(memory.get("unit", "KiB").lower(), 1)
    persistent = dom.isPersistent()
    config = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if running and persistent else None
    disks = parse_disks(xml, capacity=capacity)
    if config is not None:
        disks = with_pending(disks, parse_disks(config, capacity=capacity))
    return _StaticInfo(
        name=root.findtext("name") or dom.name(),
        vcpus=vcpus,
        memory_mib=int(kib // 1024),
        persistent=bool(persistent),
        autostart=bool(persistent and dom.autostart()),
        disks=disks,
        nics=netxml.domain_nics(root, netxml.parse(config) if config is not None else None),
        running=running,
    )


def _destroy_if_active(dom: libvirt.virDomain) -> None:
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError as err:
            # It stopped on its own between the check and the call: that is the goal.
            if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise


def _still_running(dom: libvirt.virDomain) -> bool:
    try:
        return dom.state()[0] in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED)
    except libvirt.libvirtError:
        return False


class DomainService:
    def __init__(
        self,
        conn: LibvirtConnection,
        *,
        domain_type: str,
        default_pool_dir: str,
        local_files: bool,
        arch: str = "x86_64",
    ) -> None:
        self._conn = conn
        self.domain_type = domain_type
        self.arch = arch
        self.default_pool_dir = default_pool_dir
        # Whether volume and boot paths are real files on this machine (not for test://).
        self.local_files = local_files
        self._cache: dict[str, _StaticInfo] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self._device_locks: dict[str, threading.Lock] = {}  # one device change at a time per domain

    # -- cache -------------------------------------------------------------------------------
    def invalidate(self, event: DomainEvent | None = None) -> None:
        with self._lock:
            self._generation += 1
            if event is None:
                self._cache.clear()
            else:
                self._cache.pop(str(event.uuid), None)

    def _cached_static(self, dom: libvirt.virDomain, key: str) -> _StaticInfo:
        with self._lock:
            hit = self._cache.get(key)
            generation = self._generation
        if hit is not None:
            return hit
        info = _static_info(dom, domain_disks.image_capacity if self.local_files else None)
        with self._lock:
            if generation == self._generation:
                self._cache[key] = info
        return info

    def _info(self, dom: libvirt.virDomain, state: int) -> DomainInfo:
        key = dom.UUIDString()
        static = self._cached_static(dom, key)
        if static.running != (state != libvirt.VIR_DOMAIN_SHUTOFF):
            # Started or stopped since it was read, and its event is still on the way: a stopped
            # domain's disks are its definition's, a started one's the running guest's.
            self._forget_cached(dom)
            static = self._cached_static(dom, key)
        state_name = STATE_NAMES.get(state, "nostate")
        info = static.by_state.get(state_name)
        if info is None:
            info = DomainInfo(
                uuid=uuid_mod.UUID(key),
                name=static.name,
                state=state_name,
                vcpus=static.vcpus,
                memory_mib=static.memory_mib,
                persistent=static.persistent,
                autostart=static.autostart,
                disks=static.disks,
                nics=static.nics,
            )
            static.by_state[state_name] = info
        return info

    def _info_now(self, dom: libvirt.virDomain) -> DomainInfo:
        state, _reason = dom.state()
        return self._info(dom, state)

    # -- reads -------------------------------------------------------------------------------
    def _list_sync(self, conn: libvirt.virConnect) -> list[DomainInfo]:
        infos = []
        for dom, values in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE):
            try:
                infos.append(self._info(dom, int(values.get("state.state", 0))))
            except libvirt.libvirtError as err:
                # Undefined by another tool (`virsh undefine`) between the listing and the read
                # of its XML: it is simply not there any more, and its event says so.
                if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                log.info("domain %s vanished while it was being listed", dom.UUIDString())
        return infos

    async def list(self) -> list[DomainInfo]:
        return await self._conn.call(self._list_sync, what="listing domains")

    @staticmethod
    def _lookup(conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID) -> libvirt.virDomain:
        try:
            return conn.lookupByUUIDString(str(domain_uuid))
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"no domain with uuid {domain_uuid}") from err
            raise

    async def get(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._conn.call(
            lambda c: self._info_now(self._lookup(c, domain_uuid)), what="reading domain"
        )

    async def state(self, domain_uuid: uuid_mod.UUID) -> tuple[libvirt.virDomain, str]:
        def run(c: libvirt.virConnect) -> tuple[libvirt.virDomain, str]:
            dom = self._lookup(c, domain_uuid)
            return dom, STATE_NAMES.get(dom.state()[0], "nostate")

        return await self._conn.call(run, what="reading domain state")

    # -- define ------------------------------------------------------------------------------
    def _existing(self, conn: libvirt.virConnect, spec: DomainSpec) -> DomainInfo | None:
        try:
            return self._info_now(conn.lookupByUUIDString(str(spec.uuid)))
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            return None

    def _define_sync(
        self, conn: libvirt.virConnect, spec: DomainSpec, installer: tuple[str, str] | None
    ) -> tuple[DomainInfo, bool]:
        if (existing := self._existing(conn, spec)) is not None:
            return existing, False
        try:
            other = conn.lookupByName(spec.name)
            raise Conflict(f"name: {spec.name!r} is already used by domain {other.UUIDString()}")
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        seed = storage.write_seed_iso(conn, spec, self.default_pool_dir) if self.local_files else None
        boot = storage.resolve_boot(conn, spec, self.default_pool_dir, installer=installer, seed_iso=seed)
        disks, created = storage.create_volumes(conn, spec, self.default_pool_dir)
        xml = render_domain_xml(spec, domain_type=self.domain_type, boot=boot, disks=disks, arch=self.arch)
        try:
            dom = conn.defineXML(xml)
            if spec.autostart:
                dom.setAutostart(1)
        except BaseException:
            storage.delete_volumes(created)
            raise
        log.info("defined domain %s (%s) with %d disk(s)", spec.name, spec.uuid, len(disks))
        return self._info_now(dom), True

    async def _installer(self, spec: DomainSpec) -> tuple[str, str] | None:
        if not isinstance(spec.boot, NetworkInstall):
            return None
        if not self.local_files:  # test://: nothing boots, only the paths matter
            return netinstall.installer_paths(self.default_pool_dir, spec)
        return await netinstall.fetch_installer(spec, self.default_pool_dir)

    async def define(self, spec: DomainSpec) -> tuple[DomainInfo, bool]:
        """Define `spec`; returns the domain and whether it was created by this call."""
        existing = await self._conn.call(lambda c: self._existing(c, spec), what="looking up domain")
        if existing is not None:
            return existing, False
        installer = await self._installer(spec)
        return await self._conn.call(lambda c: self._define_sync(c, spec, installer), what="defining domain")

    # -- lifecycle ---------------------------------------------------------------------------
    def _check_files(self, dom: libvirt.virDomain) -> None:
        if not self.local_files:
            return
        xml = dom.XMLDesc(0)
        for disk in parse_disks(xml):
            if disk.path and not os.path.exists(disk.path):
                raise Conflict(f"disk {disk.target} is missing: {disk.path}")
        root = etree.fromstring(xml.encode())
        for tag in ("kernel", "initrd"):
            path = root.findtext(f"os/{tag}")
            if path and not os.path.exists(path):
                raise Conflict(f"{tag} is missing: {path}")

    def _start_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, installer: tuple[str, str] | None
    ) -> DomainInfo:
        dom = self._lookup(conn, domain_uuid)
        state = dom.state()[0]
        if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            return self._info(dom, state)
        if state == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
            return self._info_now(dom)
        self._check_files(dom)
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        spec = stored_spec(xml) if install_pending(xml) else None
        if spec is None:
            dom.create()
            return self._info_now(dom)
        # First start of an installing domain: boot the installer with a definition whose reboot
        # powers off, then put back the installed system's definition for every later start (a
        # running domain's new definition applies from its next boot).
        boot = storage.resolve_boot(conn, spec, self.default_pool_dir, installer=installer)
        conn.defineXML(install_xml(xml, spec, boot))
        try:
            dom.create()
        finally:
            conn.defineXML(installed_xml(xml) if dom.isActive() else xml)
        log.info("started the installer of %s (%s)", spec.name, spec.uuid)
        self.invalidate(None)
        return self._info_now(dom)

    def _pending_installer(self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID) -> DomainSpec | None:
        xml = self._lookup(conn, domain_uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        spec = stored_spec(xml) if install_pending(xml) else None
        return spec if spec is not None and isinstance(spec.boot, NetworkInstall) else None

    def _shutdown_sync(self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        dom = self._lookup(conn, domain_uuid)
        state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_PAUSED:
            raise Conflict(f"{dom.name()} is paused, so it cannot hear the power button: resume it first")
        if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            try:
                dom.shutdown()  # ACPI request; the guest decides, events report the outcome
            except libvirt.libvirtError as err:
                # "domain is not running": it began to power off (or did) since state() above;
                # a job pressing again while the guest shuts down lands here.
                if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or _still_running(dom):
                    raise
        # SHUTDOWN (powering off already), SHUTOFF, CRASHED: nothing to press.
        return self._info_now(dom)

    def _destroy_sync(self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        dom = self._lookup(conn, domain_uuid)
        _destroy_if_active(dom)
        return self._info_now(dom)

    def _suspend_sync(self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        dom = self._lookup(conn, domain_uuid)
        state = dom.state()[0]
        if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            dom.suspend()
        elif state != libvirt.VIR_DOMAIN_PAUSED:  # paused already: done (a retried job)
            raise Conflict(f"{dom.name()} is not running, so it cannot be paused")
        return self._info_now(dom)

    def _resume_sync(self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        dom = self._lookup(conn, domain_uuid)
        state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
        elif state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            raise Conflict(f"{dom.name()} is not paused, so it cannot be resumed")
        return self._info_now(dom)

    def _reboot_sync(self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        dom = self._lookup(conn, domain_uuid)
        if dom.state()[0] not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            raise Conflict(f"{dom.name()} is not running, so it cannot be rebooted")
        dom.reboot(0)  # the hypervisor's default: an ACPI request the guest acts on
        return self._info_now(dom)

    def _autostart_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, enabled: bool
    ) -> DomainInfo:
        dom = self._lookup(conn, domain_uuid)
        if not dom.isPersistent():
            raise Conflict(f"{dom.name()} is transient: only a defined domain can start with the host")
        dom.setAutostart(1 if enabled else 0)
        self._forget_cached(dom)
        return self._info_now(dom)

    def _forget_cached(self, dom: libvirt.virDomain) -> None:
        """Changes no lifecycle event reports (autostart, resources, rename): forget this one."""
        with self._lock:
            self._generation += 1
            self._cache.pop(dom.UUIDString(), None)

    def _resources_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, request: ResourcesRequest
    ) -> ResourcesResult:
        dom = self._lookup(conn, domain_uuid)
        active = bool(dom.isActive())
        result = ResourcesResult(domain=self._info_now(dom))
        notes: Notes = []
        if request.vcpus is not None:
            result.vcpus = self._set_vcpus(dom, request.vcpus, active, notes)
        if request.memory_mib is not None:
            result.memory = self._set_memory(dom, request.memory_mib * 1024, active, notes)
        self._forget_cached(dom)
        result.domain = self._info_now(dom)
        result.detail = "; ".join(notes)
        log.info("resources of %s: vcpus %s, memory %s", dom.name(), result.vcpus, result.memory)
        return result

    @staticmethod
    def _set_vcpus(dom: libvirt.virDomain, count: int, active: bool, notes: Notes) -> Applied:
        config = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if count > dom.vcpusFlags(config | libvirt.VIR_DOMAIN_VCPU_MAXIMUM):
            dom.setVcpusFlags(count, config | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
        dom.setVcpusFlags(count, config)
        if not active:
            return "next boot"
        live = libvirt.VIR_DOMAIN_AFFECT_LIVE
        if count > dom.vcpusFlags(live | libvirt.VIR_DOMAIN_VCPU_MAXIMUM):
            notes.append(f"{count} vCPUs is above the running guest's maximum: from the next boot")
            return "next boot"
        try:
            dom.setVcpusFlags(count, live)
        except libvirt.libvirtError as err:
            notes.append(
                f"the running guest refused the vCPU change ({err.get_error_message()}): from the next boot"
            )
            return "next boot"
        return "now"

    @staticmethod
    def _set_memory(dom: libvirt.virDomain, kib: int, active: bool, notes: Notes) -> Applied:
        config = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        dom.setMemoryFlags(kib, config | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
        dom.setMemoryFlags(kib, config)
        if not active:
            return "next boot"
        if kib > dom.maxMemory():
            notes.append("more memory than the running guest started with: from the next boot")
            return "next boot"
        try:
            dom.setMemoryFlags(kib, libvirt.VIR_DOMAIN_AFFECT_LIVE)  # the balloon driver
        except libvirt.libvirtError as err:
            notes.append(
                f"the running guest refused the memory change ({err.get_error_message()}): from the next boot"
            )
            return "next boot"
        return "now"

    async def set_resources(self, domain_uuid: uuid_mod.UUID, request: ResourcesRequest) -> ResourcesResult:
        return await self._conn.call(
            lambda c: self._resources_sync(c, domain_uuid, request), what="changing memory and vCPUs"
        )

    def _rename_sync(self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, name: str) -> DomainInfo:
        dom = self._lookup(conn, domain_uuid)
        if dom.name() == name:  # a retried request
            return self._info_now(dom)
        if dom.isActive():
            raise Conflict(f"{dom.name()} is running: shut it off to rename it")
        try:
            other = conn.lookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        else:
            raise Conflict(f"name: {name!r} is already used by domain {other.UUIDString()}")
        old = dom.name()
        dom.rename(name, 0)
        self._forget_cached(dom)
        log.info("renamed %s (%s) to %s", old, domain_uuid, name)
        return self._info_now(dom)

    async def rename(self, domain_uuid: uuid_mod.UUID, name: str) -> DomainInfo:
        return await self._conn.call(
            lambda c: self._rename_sync(c, domain_uuid, name), what="renaming domain"
        )

    async def set_autostart(self, domain_uuid: uuid_mod.UUID, enabled: bool) -> DomainInfo:
        return await self._conn.call(
            lambda c: self._autostart_sync(c, domain_uuid, enabled), what="setting autostart"
        )

    async def suspend(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._conn.call(lambda c: self._suspend_sync(c, domain_uuid), what="pausing domain")

    async def resume(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._conn.call(lambda c: self._resume_sync(c, domain_uuid), what="resuming domain")

    async def reboot(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._conn.call(lambda c: self._reboot_sync(c, domain_uuid), what="rebooting domain")

    async def start(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        pending = await self._conn.call(
            lambda c: self._pending_installer(c, domain_uuid), what="reading domain"
        )
        # A network install whose files went missing since the define: fetch them again.
        installer = await self._installer(pending) if pending is not None else None
        return await self._conn.call(
            lambda c: self._start_sync(c, domain_uuid, installer), what="starting domain"
        )

    async def shutdown(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._conn.call(
            lambda c: self._shutdown_sync(c, domain_uuid), what="shutting down domain"
        )

    async def destroy(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._conn.call(lambda c: self._destroy_sync(c, domain_uuid), what="destroying domain")

    # -- disks and CD-ROM drives (agent/domain_disks.py) ---------------------------------------
    @contextlib.contextmanager
    def _device_change(self, dom: libvirt.virDomain) -> Iterator[None]:
        """One disk or card change at a time per domain (two attaches would pick the same target,
        a card's change would undo another's); the cached domain is forgotten after each,
        whatever happened."""
        key = dom.UUIDString()
        with self._lock:
            lock = self._device_locks.setdefault(key, threading.Lock())
        try:
            with lock:
                yield
        finally:
            self._forget_cached(dom)

    def _changed(self, dom: libvirt.virDomain, outcome: domain_disks.DiskOutcome) -> DiskChange:
        self._forget_cached(dom)
        return DiskChange(
            domain=self._info_now(dom),
            target=outcome.target,
            path=outcome.path,
            applied=outcome.applied,
            created=outcome.created,
            detail=outcome.detail,
        )

    def _attach_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, request: DiskAttachRequest
    ) -> DiskChange:
        dom = self._lookup(conn, domain_uuid)
        with self._device_change(dom):
            outcome = domain_disks.attach(conn, dom, request, default_dir=self.default_pool_dir)
        return self._changed(dom, outcome)

    async def attach_disk(self, domain_uuid: uuid_mod.UUID, request: DiskAttachRequest) -> DiskChange:
        """Add a disk or CD-ROM drive: to the running guest and its next boot, or (a bus without
        hot-plug) from the next boot only; a new volume is made first if asked."""
        what = "attaching a CD-ROM drive" if request.device == "cdrom" else "attaching a disk"
        return await self._conn.call(lambda c: self._attach_sync(c, domain_uuid, request), what=what)

    def _detach_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, target: str
    ) -> domain_disks.DetachStarted:
        dom = self._lookup(conn, domain_uuid)
        with self._device_change(dom):
            return domain_disks.detach(dom, target)

    async def detach_disk(self, domain_uuid: uuid_mod.UUID, target: str) -> DiskChange:
        """Take a disk or drive off the domain (its volume stays): from its definition at once,
        and from the running guest once the guest releases it (DETACH_WAIT_S at most, or it goes
        at the next boot)."""
        what = f"detaching {target}"
        deadline = time.monotonic() + DETACH_WAIT_S
        started = await self._conn.call(lambda c: self._detach_sync(c, domain_uuid, target), what=what)
        outcome = started.outcome
        if started.waiting and not await self._released(
            domain_uuid, lambda dom: domain_disks.live_has(dom, target), deadline, what
        ):
            outcome = domain_disks.not_released(outcome)
            log.info("%s of %s: %s", target, domain_uuid, outcome.detail)
        return await self._conn.call(
            lambda c: self._changed(self._lookup(c, domain_uuid), outcome), what="reading domain"
        )

    def _media_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, target: str, path: str | None
    ) -> DiskChange:
        dom = self._lookup(conn, domain_uuid)
        with self._device_change(dom):
            outcome = domain_disks.change_media(conn, dom, target, path, default_dir=self.default_pool_dir)
        return self._changed(dom, outcome)

    async def change_media(self, domain_uuid: uuid_mod.UUID, target: str, path: str | None) -> DiskChange:
        """Insert (or change) the ISO in a CD-ROM drive, or eject it (`path` None)."""
        what = f"changing the disc in {target}" if path is not None else f"ejecting the disc of {target}"
        return await self._conn.call(lambda c: self._media_sync(c, domain_uuid, target, path), what=what)

    async def _released(
        self,
        domain_uuid: uuid_mod.UUID,
        still_there: Callable[[libvirt.virDomain], bool],
        deadline: float,
        what: str,
    ) -> bool:
        """Whether the running guest released a device before `deadline` (libvirt's detach from a
        QEMU guest is asynchronous: the guest's kernel decides)."""
        while await self._conn.call(lambda c: still_there(self._lookup(c, domain_uuid)), what=what):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_DETACH_POLL_S)
        return True

    # -- network cards (agent/domain_nics.py) --------------------------------------------------
    def _nic_outcome(self, dom: libvirt.virDomain, result: domain_nics.NicResult) -> NicOutcome:
        self._forget_cached(dom)
        return NicOutcome(
            domain=self._info_now(dom), mac=result.mac, applied=result.applied, detail=result.detail
        )

    def _attach_nic_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, request: NicAttachRequest
    ) -> NicOutcome:
        dom = self._lookup(conn, domain_uuid)
        with self._device_change(dom):
            result = domain_nics.attach(conn, dom, request, local=self.local_files)
        return self._nic_outcome(dom, result)

    async def attach_nic(self, domain_uuid: uuid_mod.UUID, request: NicAttachRequest) -> NicOutcome:
        """Add a network card: to the running guest and its next boot, or (a guest that cannot
        take it now) from the next boot only. The same card again (a retried job) is answered as
        it is."""
        return await self._conn.call(
            lambda c: self._attach_nic_sync(c, domain_uuid, request), what="attaching a network card"
        )

    def _detach_nic_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, mac: str
    ) -> domain_nics.DetachStarted:
        dom = self._lookup(conn, domain_uuid)
        with self._device_change(dom):
            return domain_nics.detach(conn, dom, mac)

    async def detach_nic(self, domain_uuid: uuid_mod.UUID, mac: str) -> NicOutcome:
        """Take a network card off the domain: from its definition at once, and from the running
        guest once the guest releases it (DETACH_WAIT_S at most, or it goes at the next boot)."""
        what = f"detaching network card {mac}"
        deadline = time.monotonic() + DETACH_WAIT_S
        started = await self._conn.call(lambda c: self._detach_nic_sync(c, domain_uuid, mac), what=what)
        result = started.result
        if started.waiting and not await self._released(
            domain_uuid, lambda dom: domain_nics.live_has(dom, mac), deadline, what
        ):
            result = domain_nics.not_released(result)
            log.info("%s of %s: %s", mac, domain_uuid, result.detail)
        return await self._conn.call(
            lambda c: self._nic_outcome(self._lookup(c, domain_uuid), result), what="reading domain"
        )

    def _change_nic_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, mac: str, request: NicChangeRequest
    ) -> NicOutcome:
        dom = self._lookup(conn, domain_uuid)
        with self._device_change(dom):
            result = domain_nics.change(conn, dom, mac, request, local=self.local_files)
        return self._nic_outcome(dom, result)

    async def change_nic(self, domain_uuid: uuid_mod.UUID, mac: str, request: NicChangeRequest) -> NicOutcome:
        """Change a card's link state (live), the network or bridge it is on (live where libvirt
        can, else from the next boot) or its MAC (shut off only)."""
        return await self._conn.call(
            lambda c: self._change_nic_sync(c, domain_uuid, mac, request), what=f"changing network card {mac}"
        )

    # -- delete ------------------------------------------------------------------------------
    def _delete_sync(
        self, conn: libvirt.virConnect, domain_uuid: uuid_mod.UUID, delete_disks: bool, keep: frozenset[str]
    ) -> DeleteResult:
        dom = self._lookup(conn, domain_uuid)
        disks = parse_disks(dom.XMLDesc(0))
        if dom.isActive() and dom.isPersistent():  # a disk attached from the next boot is its too
            disks += parse_disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        volumes = list(dict.fromkeys(d.path for d in disks if d.device == "disk" and d.path))
        seed_suffix = f"-{domain_uuid.hex[:8]}-cidata.iso"
        seeds = {d.path for d in disks if d.device == "cdrom" and d.path and d.path.endswith(seed_suffix)}
        _destroy_if_active(dom)
        if dom.isPersistent():
            try:
                dom.undefineFlags(_UNDEFINE_FLAGS)
            except libvirt.libvirtError as err:
                # Older drivers (test://, some Xen) reject flags they do not know.
                if err.get_error_code() not in (
                    libvirt.VIR_ERR_INVALID_ARG,
                    libvirt.VIR_ERR_NO_SUPPORT,
                ):
                    raise
                dom.undefine()
        self.invalidate(None)
        if self.local_files:
            netinstall.remove_installer(self.default_pool_dir, str(domain_uuid))
            for seed in seeds:  # Domus made it for this domain; it holds the password hash
                with contextlib.suppress(OSError):
                    os.unlink(seed)
        result = DeleteResult(uuid=domain_uuid)
        for path in volumes:
            if delete_disks and path not in keep and storage.delete_volume_by_path(conn, path):
                result.deleted_volumes.append(path)
            else:
                result.kept_volumes.append(path)
        log.info(
            "deleted domain %s: volumes deleted %s, kept %s",
            domain_uuid,
            result.deleted_volumes,
            result.kept_volumes,
        )
        return result

    async def delete(
        self, domain_uuid: uuid_mod.UUID, *, delete_disks: bool, keep: frozenset[str] = frozenset()
    ) -> DeleteResult:
        """Undefine it; with `delete_disks`, delete its disks too, except those in `keep`."""
        return await self._conn.call(
            lambda c: self._delete_sync(c, domain_uuid, delete_disks, keep), what="deleting domain"
        )
