"""A domain's disks and CD-ROM drives after it was defined: attach one, detach one, put another
disc in a drive. Blocking libvirt work on one domain, run by DomainService (agent/domains.py)
through LibvirtConnection.call, which also keeps its cache right after each change.

A running domain gets each change live and in its definition for the next boot at once (libvirt
applies both or neither); what the running guest cannot take (a bus without hot-plug, a guest
that does not release a disk) goes to the definition alone, and the answer says "next boot". A
shut-off domain has only its definition: a change to it is all there is ("now").
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Literal

import libvirt
from lxml import etree

from agent import storage
from agent.devicedefs import Definitions, definitions
from agent.diskxml import (
    attach_bus,
    disk_targets,
    disk_xml,
    domain_root,
    find_disk,
    media_xml,
    next_target,
    render_disk,
)
from agent.domxml import ResolvedDisk
from agent.errors import Conflict, InvalidSpec, NotFound, is_connection_lost
from agent.protocol import DiskAttachRequest, VolumeDetail
from agent.volumes import VolumeUse, gib, read_volume, volume_uses

log = logging.getLogger(__name__)

Applied = Literal["now", "next boot"]
_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
_CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
_FORCE = libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE
_TRAY_ATTEMPTS = 5
_TRAY_PAUSE_S = 0.5
_QCOW2_MAGIC = b"QFI\xfb"
# Buses QEMU (and so libvirt) cannot hot-plug a device on: its IDE and AHCI (SATA) controllers.
_NO_HOTPLUG = frozenset({"ide", "sata"})


@dataclass(frozen=True)
class DiskOutcome:
    """What a change did, for DiskChange (the domain after it is read by the caller)."""

    target: str
    path: str | None
    applied: Applied
    created: bool = False
    detail: str = ""


def _source_path(disk: etree._Element) -> str | None:
    source = disk.find("source")
    if source is None:
        return None
    return source.get("file") or source.get("dev") or source.get("volume")


# -- sizes ------------------------------------------------------------------------------------
def image_capacity(path: str, fmt: str) -> int | None:
    """The size a guest sees of a local disk image, read cheaply (no libvirt call): a qcow2
    image's header, a raw file's or block device's size. None when it cannot be told so."""
    if not os.path.isabs(path):
        return None  # a <source volume=...> name, not a path
    try:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode) and fmt != "qcow2":
            return info.st_size
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if fmt != "qcow2":
                return os.lseek(fd, 0, os.SEEK_END)  # a block device
            head = os.pread(fd, 32, 0)
        finally:
            os.close(fd)
    except OSError:
        return None
    if len(head) < 32 or head[:4] != _QCOW2_MAGIC:
        return None
    return int.from_bytes(head[24:32], "big")


# -- who else writes a path -------------------------------------------------------------------
def _uses_of(conn: libvirt.virConnect, path: str) -> list[VolumeUse]:
    try:
        vol = conn.storageVolLookupByPath(path)
        pool = vol.storagePoolLookupByVolume()
        return volume_uses(conn, str(pool.name()), read_volume(vol))
    except libvirt.libvirtError as err:
        if err.get_error_code() not in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL):
            raise
    # A file no pool lists (yet): domains can only name it by its path.
    detail = VolumeDetail(name="", path=path, format="", kind="other", capacity_bytes=0, allocation_bytes=0)
    return volume_uses(conn, "", detail)


def refuse_writers(conn: libvirt.virConnect, path: str, field: str) -> None:
    """A path some domain's guest writes (a disk, not read-only) is that domain's alone."""
    writers = [use for use in _uses_of(conn, path) if use.writes]
    if writers:
        labels = ", ".join(sorted({use.label() for use in writers}))
        raise Conflict(f"{field}: {path} is a writable disk of {labels}: detach it there first")


# -- attach -----------------------------------------------------------------------------------
def _new_volume(
    conn: libvirt.virConnect, defs: Definitions, request: DiskAttachRequest, target: str, default_dir: str
) -> tuple[ResolvedDisk, libvirt.virStorageVol]:
    disk = request.disk
    pool, logical = storage.disk_pool(conn, disk, "disk")
    name = storage.free_volume_name(pool, f"{defs.name}-{target}", disk, logical=logical)
    vol = storage.create_disk_volume(
        conn, pool, name, disk, logical=logical, field="disk", default_dir=default_dir
    )
    log.info("created volume %s in pool %s for %s of %s", name, disk.pool, target, defs.name)
    try:
        return storage.resolved_volume(vol, disk, logical=logical), vol
    except BaseException:
        storage.delete_volumes([vol])
        raise


def _source(
    conn: libvirt.virConnect, defs: Definitions, request: DiskAttachRequest, target: str, default_dir: str
) -> tuple[ResolvedDisk | None, libvirt.virStorageVol | None]:
    """What the new disk or drive holds (None: an empty drive), and the volume made for it."""
    existing = request.disk.existing
    if request.device == "cdrom":
        if existing is None:
            return None, None
        iso = storage.resolve_file(conn, "disk.existing", existing, default_dir)
        refuse_writers(conn, iso, "disk.existing")
        return ResolvedDisk(path=iso, format="raw"), None
    if existing is not None:
        resolved = storage.existing_volume(conn, "disk.existing", existing, default_dir)
        refuse_writers(conn, resolved.path, "disk.existing")
        return resolved, None
    return _new_volume(conn, defs, request, target, default_dir)


def _attach_xml(
    dom: libvirt.virDomain, defs: Definitions, xml: str, target: str, bus: str
) -> tuple[Applied, str]:
    if not defs.active:
        dom.attachDeviceFlags(xml, _CONFIG)
        return "now", f"{target} attached: the guest has it from its next start"
    if bus in _NO_HOTPLUG and defs.persistent:
        dom.attachDeviceFlags(xml, _CONFIG)
        why = f"{target} is on {bus.upper()}, which takes no device while the guest runs"
        return "next boot", f"{why}: it is attached from the next boot"
    try:
        dom.attachDeviceFlags(xml, _LIVE | (_CONFIG if defs.persistent else 0))
        return "now", f"{target} attached to the running guest"
    except libvirt.libvirtError as err:
        if not defs.persistent or is_connection_lost(err):
            raise
        why = err.get_error_message() or str(err)
    # libvirt applies both or neither: the running guest could not take it, the next boot can.
    dom.attachDeviceFlags(xml, _CONFIG)
    return (
        "next boot",
        f"the running guest cannot take {target} now ({why}): it is attached from the next boot",
    )


def attach(
    conn: libvirt.virConnect, dom: libvirt.virDomain, request: DiskAttachRequest, *, default_dir: str
) -> DiskOutcome:
    """Add a disk or CD-ROM drive on the next free target of its bus."""
    defs = definitions(dom)
    try:
        bus = attach_bus(
            defs.next_boot if defs.next_boot is not None else defs.live, request.device, request.disk.bus
        )
    except ValueError as err:
        raise InvalidSpec(f"disk.bus: {err}") from err
    used = disk_targets(defs.live) | (disk_targets(defs.config) if defs.config is not None else set())
    target = next_target(used, bus)
    resolved, created = _source(conn, defs, request, target, default_dir)
    xml = render_disk(
        device=request.device,
        bus=bus,
        target=target,
        path=resolved.path if resolved is not None else None,
        fmt=resolved.format if resolved is not None else "raw",
        block=resolved.block if resolved is not None else False,
        readonly=request.readonly,
    )
    try:
        applied, detail = _attach_xml(dom, defs, xml, target, bus)
    except BaseException:
        if created is not None:
            storage.delete_volumes([created])  # made for this attach only
        raise
    path = resolved.path if resolved is not None else None
    if created is not None and request.disk.size_gib is not None:
        detail += f"; new volume {path} ({gib(int(request.disk.size_gib * storage.GIB))})"
    log.info("attached %s %s (%s) to %s: %s", request.device, target, path or "empty", defs.name, applied)
    return DiskOutcome(target=target, path=path, applied=applied, created=created is not None, detail=detail)


# -- detach -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetachStarted:
    """A detach under way: `waiting` while the running guest has yet to release the disk."""

    outcome: DiskOutcome
    waiting: bool


def _no_disk(defs: Definitions, target: str) -> NotFound:
    return NotFound(f"{defs.name} has no disk or CD-ROM drive {target}")


def detach(dom: libvirt.virDomain, target: str) -> DetachStarted:
    """Take the disk at `target` out of the definition, and ask the running guest to release it
    (the caller then waits for the guest: `live_has`). The volume is kept."""
    defs = definitions(dom)
    live = find_disk(defs.live, target) if defs.active else None
    planned = find_disk(defs.next_boot, target) if defs.next_boot is not None else None
    if live is None and planned is None:
        raise _no_disk(defs, target)
    chosen = live if live is not None else planned
    assert chosen is not None
    path = _source_path(chosen)
    if planned is not None:
        dom.detachDeviceFlags(disk_xml(planned), _CONFIG)
    if live is None:
        done = f"{target} detached; its volume is kept" if path else f"{target} removed"
        return DetachStarted(DiskOutcome(target=target, path=path, applied="now", detail=done), waiting=False)
    try:
        # libvirt asks the guest and waits a few seconds for it; the caller waits the rest.
        dom.detachDeviceFlags(disk_xml(live), _LIVE)
    except libvirt.libvirtError as err:
        if not defs.persistent or is_connection_lost(err):
            raise
        why = err.get_error_message() or str(err)
        detail = f"the running guest cannot release {target} now ({why}): it is removed from the next boot"
        log.info("detach of %s from %s: %s", target, defs.name, detail)
        return DetachStarted(
            DiskOutcome(target=target, path=path, applied="next boot", detail=detail), waiting=False
        )
    released = f"{target} detached from the running guest" + ("; its volume is kept" if path else "")
    return DetachStarted(DiskOutcome(target=target, path=path, applied="now", detail=released), waiting=True)


def live_has(dom: libvirt.virDomain, target: str) -> bool:
    """Whether the running guest still has a disk at `target` (False once it is shut off)."""
    if not dom.isActive():
        return False
    return find_disk(domain_root(dom.XMLDesc(0)), target) is not None


def not_released(outcome: DiskOutcome) -> DiskOutcome:
    target = outcome.target
    return DiskOutcome(
        target=target,
        path=outcome.path,
        applied="next boot",
        detail=f"the guest did not release {target}: it is removed from the next boot",
    )


# -- media ------------------------------------------------------------------------------------
# What libvirt says of a drive element it cannot read: the request's fault, not the guest's.
_NOT_THE_GUEST = frozenset(
    {
        libvirt.VIR_ERR_XML_ERROR,
        libvirt.VIR_ERR_XML_DETAIL,
        libvirt.VIR_ERR_INVALID_ARG,
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    }
)


def _refused(target: str, err: libvirt.libvirtError) -> Conflict:
    message = err.get_error_message() or str(err)
    if "tray" in message.lower() or "locked" in message.lower():
        hint = "the guest has locked the tray; eject from inside the guest or force off"
    else:
        hint = "the running guest refused the change"
    return Conflict(f"changing the disc in {target}: {message}: {hint}")


def change_media(
    conn: libvirt.virConnect, dom: libvirt.virDomain, target: str, iso: str | None, *, default_dir: str
) -> DiskOutcome:
    """Put the ISO at `iso` in the CD-ROM drive at `target`, or eject its disc (`iso` None)."""
    defs = definitions(dom)
    live = find_disk(defs.live, target) if defs.active else None
    planned = find_disk(defs.next_boot, target) if defs.next_boot is not None else None
    drive = live if live is not None else planned
    if drive is None:
        raise _no_disk(defs, target)
    if drive.get("device") != "cdrom":
        raise InvalidSpec(f"{target} of {defs.name} is a disk, not a CD-ROM drive: it takes no disc")
    path = storage.resolve_file(conn, "path", iso, default_dir) if iso is not None else None
    if path is not None:
        refuse_writers(conn, path, "path")
    if live is not None:
        # Forced, as a person pressing eject means it: a guest whose kernel has the drive open
        # (it locks the tray while it probes or reads the disc) would otherwise refuse, at
        # random. A CD is read-only: the guest at worst sees its disc go mid-read.
        # A guest probing its drive (as Linux does while it boots and loads sr_mod) closes the
        # tray between libvirt's eject and its insert now and then: tried again, briefly.
        flags = _LIVE | _FORCE | (_CONFIG if planned is not None else 0)
        for attempt in range(1, _TRAY_ATTEMPTS + 1):
            try:
                dom.updateDeviceFlags(media_xml(live, path), flags)
                break
            except libvirt.libvirtError as err:
                if is_connection_lost(err) or err.get_error_code() in _NOT_THE_GUEST:
                    raise
                if attempt == _TRAY_ATTEMPTS or "tray" not in (err.get_error_message() or "").lower():
                    raise _refused(target, err) from err
                log.info("disc in %s of %s: %s; trying again", target, defs.name, err.get_error_message())
                time.sleep(_TRAY_PAUSE_S)
    else:
        assert planned is not None
        dom.updateDeviceFlags(media_xml(planned, path), _CONFIG)
    log.info("disc in %s of %s: %s", target, defs.name, path or "ejected")
    detail = f"{path} is in {target}" if path is not None else f"{target} is empty"
    return DiskOutcome(target=target, path=path, applied="now", detail=detail)
