"""The volumes of a storage pool: a page of them, and create, resize, clone, delete and download.

The `*_sync` functions are blocking libvirt calls on a connection; `VolumeService` runs them
through `LibvirtConnection.call` and says when pools changed (a volume's bytes are its pool's),
so that subscribers hear of it. A download is opened here (lookups, refusals, the file or
libvirt stream) and sent by the HTTP layer (agent/api.py) a chunk at a time, never whole.

Which domains use a volume comes from their XML: a running domain's live definition (its disks,
their backing chains included) and every domain's definition for its next boot. The guest
*writes* a volume that is the top of one of its disks' chains and not read-only; copying or
reading out such a volume while the guest runs gives a torn copy, so both are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol

import libvirt
from lxml import etree

from agent.connection import LibvirtConnection
from agent.errors import AgentProblem, Conflict, InvalidSpec, NotFound, from_libvirt, is_connection_lost
from agent.protocol import (
    VOLUME_PAGE_MAX,
    VolumeCreateRequest,
    VolumeDetail,
    VolumeKind,
    VolumeList,
    VolumeResult,
)
from agent.storage import volume_or_none

log = logging.getLogger(__name__)

GIB = 1024**3
CHUNK = 1024 * 1024  # bytes read (file or libvirt stream) and written to the client at a time
# Pool types whose volumes are files on this machine's file system (read directly to download).
_FILE_POOLS = frozenset({"dir", "fs", "netfs"})
# Pool types whose volumes are image files (qcow2 or raw); the others hold raw block devices
# (logical volumes, partitions, zvols), always fully allocated.
_IMAGE_POOLS = frozenset({"dir", "fs", "netfs", "gluster"})
# Pool types whose volumes are made on the storage itself (LUNs), never by libvirt.
_NO_CREATE = frozenset({"iscsi", "scsi", "iscsi-direct", "mpath"})
# How much a volume may be larger than asked and still be "the same size": qemu-img rounds up to
# 512 bytes, LVM to its extent (4 MiB by default).
_SIZE_ROUNDING = 4 * 1024 * 1024
# What a disk image looks like: by format (libvirt probes files in a pool), by name otherwise.
_DISK_FORMATS = frozenset({"qcow2", "qcow", "qed", "vmdk", "vdi", "vpc", "vhdx"})
_DISK_SUFFIXES = (".qcow2", ".qcow", ".img", ".raw", ".vmdk", ".vdi", ".vhd", ".vhdx")
_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": GIB, "gib": GIB}
_RANGE_RE = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$", re.ASCII)  # no number past 2**63

Changed = Callable[[], None]


# -- reading a volume --------------------------------------------------------------------------
def _parse(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


def _bytes(element: etree._Element | None) -> int:
    if element is None or not element.text:
        return 0
    return int(element.text) * _UNITS.get(element.get("unit", "bytes").lower(), 1)


def gib(count: int) -> str:
    """A size for people: "20 GiB", "1.5 GiB", "0.06 GiB"."""
    return f"{count / GIB:.2f}".rstrip("0").rstrip(".") + " GiB"


def volume_kind(name: str, fmt: str, vol_type: str) -> VolumeKind:
    """What a volume is for, from its name and format (no look inside it):

    - iso: named *.iso, or libvirt found an ISO 9660 image in it;
    - cloud-image: a disk image (below) with "cloud" in its name, as the images distributions
      publish for cloud-init are named (debian-12-genericcloud-amd64.qcow2,
      Fedora-Cloud-Base-*.qcow2, ubuntu-*-cloudimg-amd64.img, CentOS-Stream-GenericCloud-*);
    - disk: an image format (qcow2, vmdk ...), an image file name (.qcow2, .img, .raw ...), or a
      block device (a logical volume, a partition, a LUN);
    - other: anything else (a kernel, a raw file of unknown use, a directory).
    """
    lower = name.lower()
    if lower.endswith(".iso") or fmt == "iso":
        return "iso"
    image = (
        fmt in _DISK_FORMATS
        or lower.endswith(_DISK_SUFFIXES)
        or (vol_type in ("block", "network") and fmt in ("", "raw", "none"))
    )
    if not image:
        return "other"
    return "cloud-image" if "cloud" in lower else "disk"


def _detail_of(root: etree._Element, fallback_name: str, fallback_path: str) -> VolumeDetail:
    name = root.findtext("name") or fallback_name
    format_el = root.find("target/format")
    fmt = (format_el.get("type") or "") if format_el is not None else ""
    return VolumeDetail(
        name=name,
        path=root.findtext("target/path") or fallback_path,
        format=fmt,
        kind=volume_kind(name, fmt, root.get("type") or "file"),
        capacity_bytes=_bytes(root.find("capacity")),
        allocation_bytes=_bytes(root.find("allocation")),
        backing=root.findtext("backingStore/path") or None,
    )


def read_volume(vol: libvirt.virStorageVol) -> VolumeDetail:
    """Blocking: one call (its XML holds the sizes, the format and the backing image)."""
    return _detail_of(_parse(vol.XMLDesc(0)), str(vol.name()), "")


def _pool_type(pool: libvirt.virStoragePool) -> str:
    return str(_parse(pool.XMLDesc(0)).get("type") or "dir")


def pool_named(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool:
    """The storage pool `name` (NotFound, saying so, when the host has none)."""
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise NotFound(f"no storage pool {name!r} on this host") from err
        raise


def _running_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool:
    pool = pool_named(conn, name)
    if not pool.isActive():
        raise Conflict(f"storage pool {name!r} is not running: start it first")
    return pool


def _volume(pool: libvirt.virStoragePool, pool_name: str, name: str) -> libvirt.virStorageVol:
    vol = volume_or_none(pool, name)
    if vol is None:
        _refresh(pool)  # copied in by hand since the pool was last scanned?
        vol = volume_or_none(pool, name)
    if vol is None:
        raise NotFound(f"no volume {name!r} in storage pool {pool_name!r}")
    return vol


def _refresh(pool: libvirt.virStoragePool) -> None:
    """Rescan, so that files copied in by hand are listed; a busy pool (a volume being built)
    lists what it knows."""
    try:
        pool.refresh(0)
    except libvirt.libvirtError as err:
        if is_connection_lost(err):
            raise
        log.info("storage pool %s not refreshed: %s", pool.name(), err.get_error_message() or err)


def _available(pool: libvirt.virStoragePool) -> int:
    return int(pool.info()[3])


def _check_room(pool_name: str, needed: int, available: int, what: str) -> None:
    """`what` (e.g. "capacity_bytes: a preallocated volume") needs `needed` bytes of the pool."""
    if needed > available:
        raise InvalidSpec(
            f"{what} needs {gib(needed)} and storage pool {pool_name!r} has {gib(available)} free"
        )


# -- who uses a volume -------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeUse:
    """One disk of one domain that points at a volume."""

    domain: str
    uuid: str
    target: str  # vda, hdc ...
    live: bool  # in a running domain's live definition (else in a definition for its next boot)
    role: str  # "" (the guest writes it), "CD-ROM", "read-only" or "backing image"

    @property
    def writes(self) -> bool:
        """The top of the disk's chain, not read-only: the guest writes it."""
        return not self.role

    def label(self) -> str:
        return f"{self.domain} ({self.target}{', ' + self.role if self.role else ''})"


def _same_file(a: str, b: str) -> bool:
    return a == b or os.path.realpath(a) == os.path.realpath(b)


class _Target:
    """How a domain's disk may name a volume: by its path, or by pool and volume name."""

    def __init__(self, pool: str, name: str, path: str) -> None:
        self.pool, self.name, self.path = pool, name, path

    def named_by(self, source: etree._Element) -> bool:
        if source.get("volume") is not None:
            return source.get("pool") == self.pool and source.get("volume") == self.name
        path = source.get("file") or source.get("dev")
        return path is not None and _same_file(path, self.path)


def _role(disk: etree._Element, source: etree._Element) -> str:
    if source is not disk.find("source"):
        return "backing image"
    if disk.get("device") == "cdrom":
        return "CD-ROM"
    return "read-only" if disk.find("readonly") is not None else ""


def _uses_in(xml: str, target: _Target, *, live: bool, domain: str, uuid: str) -> list[VolumeUse]:
    uses = []
    for disk in _parse(xml).iterfind("devices/disk"):
        dev = disk.find("target")
        for source in disk.iter("source"):
            if target.named_by(source):
                uses.append(
                    VolumeUse(
                        domain=domain,
                        uuid=uuid,
                        target=dev.get("dev", "") if dev is not None else "",
                        live=live,
                        role=_role(disk, source),
                    )
                )
    return uses


def volume_uses(conn: libvirt.virConnect, pool_name: str, detail: VolumeDetail) -> list[VolumeUse]:
    """Blocking: every disk of every domain on this host that points at the volume."""
    target = _Target(pool_name, detail.name, detail.path)
    uses: list[VolumeUse] = []
    for dom in conn.listAllDomains(0):
        try:
            name, uuid = str(dom.name()), str(dom.UUIDString())
            if dom.isActive():
                uses += _uses_in(dom.XMLDesc(0), target, live=True, domain=name, uuid=uuid)
                if dom.isPersistent():
                    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                    uses += _uses_in(xml, target, live=False, domain=name, uuid=uuid)
            else:
                uses += _uses_in(dom.XMLDesc(0), target, live=False, domain=name, uuid=uuid)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise  # undefined since the listing: it uses nothing any more
    return uses


def _labels(uses: list[VolumeUse]) -> str:
    return ", ".join(sorted(dict.fromkeys(use.label() for use in uses)))


def _running_writers(uses: list[VolumeUse]) -> list[VolumeUse]:
    return [use for use in uses if use.live and use.writes]


def overlays_on(conn: libvirt.virConnect, path: str) -> list[str]:
    """Blocking: the volumes of this host's running image pools layered on `path` (qcow2
    overlays whose backing image it is). One XML read per image volume: for deletes only."""
    found = []
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        try:
            if _pool_type(pool) not in _IMAGE_POOLS:
                continue
            vols = pool.listAllVolumes(0)
        except libvirt.libvirtError as err:
            if is_connection_lost(err):
                raise
            continue  # stopped or removed since the listing
        for vol in vols:
            try:
                if str(vol.name()).lower().endswith(".iso"):
                    continue
                root = _parse(vol.XMLDesc(0))
            except libvirt.libvirtError as err:
                if is_connection_lost(err):
                    raise
                continue  # deleted since the listing
            backing = root.findtext("backingStore/path")
            if backing and _same_file(backing, path):
                found.append(root.findtext("target/path") or str(vol.path()))
    return sorted(found)


# -- list --------------------------------------------------------------------------------------
def list_volumes_sync(conn: libvirt.virConnect, pool_name: str, *, limit: int, offset: int) -> VolumeList:
    """A page of a pool's volumes by name (names starting with '.' are hidden files, skipped: an
    upload's `.domus-upload-*` files among them): one listing for all, then one XML read for each
    volume of the page only."""
    if not 0 < limit <= VOLUME_PAGE_MAX or offset < 0:
        raise InvalidSpec(f"limit: 1 to {VOLUME_PAGE_MAX}; offset: 0 or more")
    pool = _running_pool(conn, pool_name)
    _refresh(pool)
    names = sorted(n for n in pool.listVolumes() if not n.startswith("."))
    volumes = []
    for name in names[offset : offset + limit]:
        vol = volume_or_none(pool, name)
        if vol is None:
            continue  # deleted since the listing
        try:
            volumes.append(read_volume(vol))
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
    return VolumeList(pool=pool_name, volumes=volumes, total=len(names))


# -- create ------------------------------------------------------------------------------------
def volume_xml(name: str, *, capacity: int, allocation: int, fmt: str | None) -> str:
    """libvirt's volume XML (https://libvirt.org/formatstorage.html#storage-volume-xml);
    `fmt` None for a block pool's volume (an LV has no image format)."""
    root = etree.Element("volume")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    etree.SubElement(root, "allocation", unit="bytes").text = str(allocation)
    if fmt is not None:
        target = etree.SubElement(root, "target")
        etree.SubElement(target, "format", type=fmt)
    return etree.tostring(root, encoding="unicode")


def _name_taken(pool_name: str, name: str, detail: VolumeDetail) -> Conflict:
    return Conflict(
        f"storage pool {pool_name!r} already has a volume {name!r} "
        f"({detail.format or 'raw'}, {gib(detail.capacity_bytes)}): choose another name"
    )


def _created_or_raise(
    pool: libvirt.virStoragePool, pool_name: str, name: str, err: libvirt.libvirtError
) -> None:
    """libvirt says a taken name with a generic error: a volume made under that name meanwhile
    (another request), or a file copied in by hand that the pool had not scanned yet, is a
    conflict; anything else is the error it is."""
    if is_connection_lost(err):
        return
    _refresh(pool)
    existing = volume_or_none(pool, name)
    if existing is not None:
        raise _name_taken(pool_name, name, read_volume(existing)) from err


def create_volume_sync(
    conn: libvirt.virConnect, pool_name: str, request: VolumeCreateRequest
) -> tuple[VolumeResult, bool]:
    """Create a volume; returns it and whether this call made it. A volume of that name, format
    and size already there answers the request (a retry); another under that name is a conflict."""
    pool = _running_pool(conn, pool_name)
    kind = _pool_type(pool)
    name = request.name
    if kind in _NO_CREATE:
        raise InvalidSpec(
            f"storage pool {pool_name!r} is of type {kind}: its volumes are made on the storage "
            "itself, not through libvirt"
        )
    image = kind in _IMAGE_POOLS
    if not image and request.format != "raw":
        raise InvalidSpec(f"format: a storage pool of type {kind} holds raw volumes only")
    existing = volume_or_none(pool, name)
    if existing is not None:
        detail = read_volume(existing)
        same_format = detail.format == request.format or (not image and detail.format in ("", "raw", "none"))
        if same_format and 0 <= detail.capacity_bytes - request.capacity_bytes < _SIZE_ROUNDING:
            return VolumeResult(volume=detail, detail=f"volume {name!r} already exists"), False
        raise _name_taken(pool_name, name, detail)
    # Preallocated: the whole size is taken now (always so for a block pool's volume).
    preallocated = request.allocation == "preallocated" or not image
    if preallocated:
        _check_room(
            pool_name, request.capacity_bytes, _available(pool), "capacity_bytes: a preallocated volume"
        )
    xml = volume_xml(
        name,
        capacity=request.capacity_bytes,
        allocation=request.capacity_bytes if preallocated else 0,
        fmt=request.format if image else None,
    )
    # For qcow2, libvirt preallocates only with this flag (qemu-img's preallocation=falloc when
    # allocation equals capacity); raw files are preallocated by the allocation alone.
    flags = (
        libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA if preallocated and request.format == "qcow2" else 0
    )
    try:
        vol = pool.createXML(xml, flags)
    except libvirt.libvirtError as err:
        _created_or_raise(pool, pool_name, name, err)
        raise
    detail = read_volume(vol)
    how = "preallocated" if preallocated else "sparse"
    log.info(
        "created volume %s in pool %s (%s, %d bytes, %s)",
        name,
        pool_name,
        detail.format,
        detail.capacity_bytes,
        how,
    )
    return VolumeResult(
        volume=detail, detail=f"volume {name!r} created: {gib(detail.capacity_bytes)}, {how}"
    ), True


# -- resize ------------------------------------------------------------------------------------
def _fully_allocated(detail: VolumeDetail, image: bool) -> bool:
    """Growing it takes the space at once: a block pool's volume, or a preallocated raw file."""
    return not image or (detail.format == "raw" and detail.allocation_bytes >= detail.capacity_bytes)


def resize_volume_sync(conn: libvirt.virConnect, pool_name: str, name: str, capacity: int) -> VolumeResult:
    """Grow a volume (never shrink). A running domain that writes it grows it (libvirt's block
    resize: its guest sees the new size at once); otherwise the volume itself is grown."""
    pool = _running_pool(conn, pool_name)
    vol = _volume(pool, pool_name, name)
    before = read_volume(vol)
    if capacity == before.capacity_bytes:  # a retry of a grow already done (the agent restarted)
        return VolumeResult(volume=before, detail=f"volume {name!r} is {gib(capacity)} already")
    if capacity < before.capacity_bytes:
        raise InvalidSpec(
            f"capacity_bytes: volume {name!r} is {gib(before.capacity_bytes)} "
            f"({before.capacity_bytes} bytes) already; volumes only grow: shrinking is refused "
            "because it loses the data at the end of the disk"
        )
    image = _pool_type(pool) in _IMAGE_POOLS
    allocate = _fully_allocated(before, image)
    if allocate:
        grow = capacity - before.capacity_bytes
        _check_room(
            pool_name, grow, _available(pool), f"capacity_bytes: growing volume {name!r} by {gib(grow)}"
        )
    uses = volume_uses(conn, pool_name, before)
    writers = _running_writers(uses)
    readers = [use for use in uses if use.live and not use.writes]
    if len({use.domain for use in writers}) > 1:
        raise Conflict(f"volume {name!r} is written by several running domains ({_labels(writers)})")
    if not writers and readers:
        raise Conflict(
            f"volume {name!r} is in use read-only by running domains ({_labels(readers)}): "
            "shut them off to grow it"
        )
    if writers:
        use = writers[0]
        dom = conn.lookupByUUIDString(use.uuid)
        dom.blockResize(use.target, capacity, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        after = read_volume(vol)
        log.info("grew volume %s of pool %s live through %s (%s)", name, pool_name, use.domain, use.target)
        return VolumeResult(
            volume=after,
            detail=(
                f"volume {name!r} grown from {gib(before.capacity_bytes)} to {gib(after.capacity_bytes)}, "
                f"live: the guest of {use.domain} sees {gib(after.capacity_bytes)} now ({use.target}; "
                "grow its partition and file system inside to use the space)"
            ),
        )
    # A preallocated raw file stays preallocated; a sparse one or a qcow2 grows as it is written.
    vol.resize(capacity, libvirt.VIR_STORAGE_VOL_RESIZE_ALLOCATE if allocate and image else 0)
    after = read_volume(vol)
    log.info("grew volume %s of pool %s to %d bytes", name, pool_name, after.capacity_bytes)
    detail = f"volume {name!r} grown from {gib(before.capacity_bytes)} to {gib(after.capacity_bytes)}"
    later = sorted({use.domain for use in uses})
    if later:
        detail += f"; {', '.join(later)} {'sees' if len(later) == 1 else 'see'} it at the next boot"
    return VolumeResult(volume=after, detail=detail)


# -- clone -------------------------------------------------------------------------------------
def clone_volume_sync(conn: libvirt.virConnect, pool_name: str, name: str, new_name: str) -> VolumeResult:
    """Copy a volume under a new name in the same pool, in the same format (a qcow2 overlay's
    copy holds its backing image's data too: it stands alone)."""
    pool = _running_pool(conn, pool_name)
    source = _volume(pool, pool_name, name)
    detail = read_volume(source)
    existing = volume_or_none(pool, new_name)
    if existing is not None:
        raise _name_taken(pool_name, new_name, read_volume(existing))
    writers = _running_writers(volume_uses(conn, pool_name, detail))
    if writers:
        raise Conflict(
            f"volume {name!r} is written by running domain {_labels(writers)}: a copy of a disk in "
            "use would be corrupt; shut the domain off first"
        )
    image = _pool_type(pool) in _IMAGE_POOLS
    needed = detail.allocation_bytes if image else detail.capacity_bytes
    _check_room(pool_name, needed, _available(pool), f"a copy of {name!r}")
    xml = volume_xml(
        new_name,
        capacity=detail.capacity_bytes,
        allocation=min(detail.allocation_bytes, detail.capacity_bytes) if image else detail.capacity_bytes,
        fmt=(detail.format or "raw") if image else None,
    )
    try:
        vol = pool.createXMLFrom(xml, source, 0)
    except libvirt.libvirtError as err:
        _created_or_raise(pool, pool_name, new_name, err)
        raise
    copy = read_volume(vol)
    log.info("cloned volume %s of pool %s as %s", name, pool_name, new_name)
    return VolumeResult(
        volume=copy, detail=f"volume {name!r} copied to {new_name!r} ({gib(copy.capacity_bytes)})"
    )


# -- delete ------------------------------------------------------------------------------------
def delete_volume_sync(conn: libvirt.virConnect, pool_name: str, name: str) -> VolumeResult:
    """Delete a volume no domain uses (as a disk, a CD-ROM or a backing image) and no other
    volume is layered on."""
    pool = _running_pool(conn, pool_name)
    vol = _volume(pool, pool_name, name)
    detail = read_volume(vol)
    uses = volume_uses(conn, pool_name, detail)
    if uses:
        raise Conflict(
            f"volume {name!r} is used by {_labels(uses)}: detach it from them (or delete them) first"
        )
    overlays = overlays_on(conn, detail.path)
    if overlays:
        raise Conflict(f"volume {name!r} is the backing image of {', '.join(overlays)}: delete those first")
    vol.delete(0)
    log.info("deleted volume %s of pool %s", name, pool_name)
    return VolumeResult(volume=None, detail=f"volume {name!r} deleted")


# -- download ----------------------------------------------------------------------------------
class RangeNotSatisfiable(AgentProblem):
    status = 416
    code = "range_not_satisfiable"


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) of what an HTTP `Range` header asks of `size` bytes, or None for all of
    them: no header, or a form not served here (several ranges, another unit), which RFC 9110
    lets a server answer with the whole. A range starting at or past the end raises
    RangeNotSatisfiable."""
    if not header:
        return None
    match = _RANGE_RE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        count = min(int(last), size)
        if count == 0:
            raise RangeNotSatisfiable(f"Range {header!r}: the volume holds {size} bytes")
        return size - count, count
    start = int(first)
    if last and int(last) < start:
        return None  # not a valid range: ignored
    if start >= size:
        raise RangeNotSatisfiable(f"Range {header!r}: the volume holds {size} bytes")
    end = min(int(last), size - 1) if last else size - 1
    return start, end - start + 1


class VolumeDownload(Protocol):
    """An opened volume to send: its name and size, validators for `If-Range`, its bytes."""

    name: str
    size: int
    etag: str | None
    last_modified: str | None  # an HTTP date

    def chunks(self, start: int, length: int) -> AsyncGenerator[bytes, None]: ...

    async def close(self) -> None: ...


class FileDownload:
    """A volume that is a file here, read at offsets in a worker thread (its size is the file's)."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self._fd = fd
        stat = os.fstat(fd)
        self.size = stat.st_size
        self.etag: str | None = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        self.last_modified: str | None = email.utils.formatdate(stat.st_mtime, usegmt=True)

    async def chunks(self, start: int, length: int) -> AsyncGenerator[bytes, None]:
        position, end = start, start + length
        while position < end:
            data = await asyncio.to_thread(os.pread, self._fd, min(CHUNK, end - position), position)
            if not data:
                raise OSError(f"volume {self.name!r} ended at {position} bytes, not {end}: it shrank")
            position += len(data)
            yield data

    async def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            await asyncio.to_thread(os.close, fd)


class StreamDownload:
    """A volume read through libvirt (virStorageVolDownload): block devices, network pools."""

    def __init__(self, conn: libvirt.virConnect, vol: libvirt.virStorageVol, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.etag: str | None = None  # nothing to tell a changed volume by: If-Range gets the whole
        self.last_modified: str | None = None
        self._conn = conn
        self._vol = vol

    async def chunks(self, start: int, length: int) -> AsyncGenerator[bytes, None]:
        what = f"reading volume {self.name!r}"
        try:
            stream = await asyncio.to_thread(self._conn.newStream, 0)
        except libvirt.libvirtError as err:
            raise from_libvirt(err, what=what) from err
        finished = False
        try:
            await asyncio.to_thread(self._vol.download, stream, start, length, 0)
            remaining = length
            while remaining > 0:
                data = await asyncio.to_thread(stream.recv, min(CHUNK, remaining))
                if not isinstance(data, bytes) or not data:
                    break
                remaining -= len(data)
                yield data
            await asyncio.to_thread(stream.finish)
            finished = True
            if remaining > 0:
                raise OSError(f"volume {self.name!r} ended {remaining} bytes early: it shrank")
        except libvirt.libvirtError as err:
            raise from_libvirt(err, what=what) from err
        finally:
            if not finished:
                with contextlib.suppress(libvirt.libvirtError):
                    await asyncio.to_thread(stream.abort)

    async def close(self) -> None:
        return None


def open_download_sync(
    conn: libvirt.virConnect, pool_name: str, name: str, *, local_files: bool
) -> VolumeDownload:
    """Open a volume to download it. Refused while a running domain writes it (the bytes would
    be torn); CD-ROMs and backing images are read-only to their domains, so always readable."""
    pool = _running_pool(conn, pool_name)
    vol = _volume(pool, pool_name, name)
    root = _parse(vol.XMLDesc(0))
    detail = _detail_of(root, name, str(vol.path()))
    vol_type = root.get("type") or "file"
    if vol_type in ("dir", "netdir"):
        raise InvalidSpec(f"volume {name!r} is a directory: there is no file to download")
    writers = _running_writers(volume_uses(conn, pool_name, detail))
    if writers:
        raise Conflict(
            f"volume {name!r} is written by running domain {_labels(writers)}: its bytes change "
            "as they are read; shut the domain off (or clone the volume while it is off) first"
        )
    if local_files and vol_type == "file" and _pool_type(pool) in _FILE_POOLS:
        try:
            fd = os.open(detail.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise NotFound(f"volume {name!r} of storage pool {pool_name!r} is gone ({detail.path})") from err
        try:
            return FileDownload(detail.name, fd)
        except BaseException:
            os.close(fd)
            raise
    _type, capacity, physical = vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)
    return StreamDownload(conn, vol, detail.name, int(physical or capacity))


# -- the service -------------------------------------------------------------------------------
class VolumeService:
    """The volume operations on the agent's connection; `changed` is called after each one that
    changes a pool (the event hub then publishes fresh resources)."""

    def __init__(self, conn: LibvirtConnection, *, changed: Changed, local_files: bool) -> None:
        self._conn = conn
        self._changed = changed
        self.local_files = local_files  # whether volume paths are files on this machine (not test://)

    async def list(self, pool: str, *, limit: int, offset: int) -> VolumeList:
        return await self._conn.call(
            lambda c: list_volumes_sync(c, pool, limit=limit, offset=offset),
            what=f"listing the volumes of storage pool {pool!r}",
        )

    async def create(self, pool: str, request: VolumeCreateRequest) -> tuple[VolumeResult, bool]:
        try:
            return await self._conn.call(
                lambda c: create_volume_sync(c, pool, request),
                what=f"creating volume {request.name!r} in storage pool {pool!r}",
            )
        finally:
            self._changed()

    async def resize(self, pool: str, name: str, capacity_bytes: int) -> VolumeResult:
        try:
            return await self._conn.call(
                lambda c: resize_volume_sync(c, pool, name, capacity_bytes),
                what=f"growing volume {name!r} of storage pool {pool!r}",
            )
        finally:
            self._changed()

    async def clone(self, pool: str, name: str, new_name: str) -> VolumeResult:
        try:
            return await self._conn.call(
                lambda c: clone_volume_sync(c, pool, name, new_name),
                what=f"copying volume {name!r} of storage pool {pool!r} to {new_name!r}",
            )
        finally:
            self._changed()

    async def delete(self, pool: str, name: str) -> VolumeResult:
        try:
            return await self._conn.call(
                lambda c: delete_volume_sync(c, pool, name),
                what=f"deleting volume {name!r} of storage pool {pool!r}",
            )
        finally:
            self._changed()

    async def open_download(self, pool: str, name: str) -> VolumeDownload:
        """The caller sends its chunks and closes it."""
        local = self.local_files
        return await self._conn.call(
            lambda c: open_download_sync(c, pool, name, local_files=local),
            what=f"opening volume {name!r} of storage pool {pool!r}",
        )
