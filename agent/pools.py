"""Storage pools: their XML (built with lxml from a PoolSpec), what a host's libvirt can run, how
one is read for the console, and the operations on them (define, start, stop, refresh,
autostart, delete).

The `*_sync` functions and readers are blocking libvirt calls; `PoolService` runs them through
`LibvirtConnection.call` and says when pools changed, so that subscribers hear of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable

import libvirt
from lxml import etree

from agent.connection import LibvirtConnection
from agent.errors import Conflict, InvalidSpec, NotFound, from_libvirt, is_connection_lost
from agent.protocol import (
    MAX_POOL_VOLUMES,
    POOL_BUILDABLE,
    POOL_TYPES,
    PoolInfo,
    PoolResult,
    PoolSpec,
    VolumeInfo,
)
from agent.storage import is_upload_file

log = logging.getLogger(__name__)

POOL_STATE_NAMES: dict[int, str] = {
    libvirt.VIR_STORAGE_POOL_INACTIVE: "inactive",
    libvirt.VIR_STORAGE_POOL_BUILDING: "building",
    libvirt.VIR_STORAGE_POOL_RUNNING: "running",
    libvirt.VIR_STORAGE_POOL_DEGRADED: "degraded",
    libvirt.VIR_STORAGE_POOL_INACCESSIBLE: "inaccessible",
}
# Where the volumes of a type appear, for the types whose XML needs a target the spec does not
# take (libvirt's schema requires one; logical's is /dev/<vg>, zfs and gluster need none).
DEFAULT_TARGETS = {"disk": "/dev", "iscsi": "/dev/disk/by-path", "scsi": "/dev/disk/by-path"}
# Types whose volumes are exactly what lies under their target path (a directory, a mount, /dev/<vg>).
_TARGET_HOLDS_VOLUMES = frozenset({"dir", "fs", "netfs", "logical", "zfs"})
# Types where files are copied in by hand (an ISO): libvirt lists them only after a refresh.
_REFRESHED_ON_READ = frozenset({"dir", "fs", "netfs"})
# Make the file system, volume group or partition table only where none is found (libvirt's
# default for fs is to make none at all); zfs and directories take no flag.
_BUILD_FLAGS = {
    "fs": libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE,
    "logical": libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE,
    "disk": libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE,
}
# Types whose storage, once deleted, takes its volumes with it (LVM's vgremove -f, zpool destroy,
# a wiped partition table) or cannot go while they are there (a directory): refused while the pool
# holds any. An fs or netfs pool's storage is its mount point: the volumes stay on the device.
_STORAGE_HOLDS_VOLUMES = frozenset({"dir", "logical", "disk", "zfs"})
_IMAGE_SUFFIXES = (".qcow2", ".img", ".raw")

PoolsChanged = Callable[[], None]


# -- XML ---------------------------------------------------------------------------------------
def pool_xml(spec: PoolSpec) -> str:
    """libvirt's storage pool XML for `spec` (https://libvirt.org/formatstorage.html)."""
    kind = spec.type
    root = etree.Element("pool", type=kind)
    etree.SubElement(root, "name").text = spec.name
    if kind != "dir":
        source = etree.SubElement(root, "source")
        if spec.source_host is not None:
            etree.SubElement(source, "host", name=spec.source_host)
        if kind == "iscsi" and spec.source_name is not None:
            etree.SubElement(source, "device", path=spec.source_name)  # the target's IQN
        for device in spec.source_devices:
            etree.SubElement(source, "device", path=device)
        if spec.source_dir is not None:
            path = spec.source_dir
            if kind == "netfs" and spec.source_format in ("cifs", "glusterfs"):
                path = path.lstrip("/") or "/"  # a share or volume name, not a path
            etree.SubElement(source, "dir", path=path)
        if kind in ("logical", "zfs", "gluster") and spec.source_name is not None:
            etree.SubElement(source, "name").text = spec.source_name
        if spec.adapter is not None:
            etree.SubElement(source, "adapter", type="scsi_host", name=spec.adapter)
        if spec.source_format is not None:
            etree.SubElement(source, "format", type=spec.source_format)
    target_path = spec.target_path or DEFAULT_TARGETS.get(kind)
    if kind == "logical" and spec.source_name is not None:
        target_path = f"/dev/{spec.source_name}"  # where LVM puts its volumes (the RNG wants it said)
    if target_path is not None:
        target = etree.SubElement(root, "target")
        etree.SubElement(target, "path").text = target_path
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def _parse(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


def _attr(root: etree._Element, path: str, attr: str) -> str | None:
    element = root.find(path)
    return element.get(attr) if element is not None else None


def _where(root: etree._Element) -> dict[str, str | tuple[str, ...] | None]:
    """What makes a pool the pool it is: its type and where its storage is."""
    return {
        "type": root.get("type"),
        "target path": root.findtext("target/path"),
        "source host": tuple(h.get("name", "") for h in root.iterfind("source/host")),
        "source device": tuple(d.get("path", "") for d in root.iterfind("source/device")),
        "source dir": _attr(root, "source/dir", "path"),
        "source name": root.findtext("source/name"),
        "source format": _attr(root, "source/format", "type"),
        "adapter": _attr(root, "source/adapter", "name"),
    }


def _show(value: str | tuple[str, ...] | None) -> str:
    if isinstance(value, tuple):
        return ", ".join(value) or "none"
    return value or "none"


def definition_differences(existing_xml: str, wanted_xml: str) -> list[str]:
    """How an existing pool differs from the one asked for, in what the request says (libvirt
    fills in what it leaves out, e.g. a volume group's target path); empty when it is the same."""
    existing, wanted = _where(_parse(existing_xml)), _where(_parse(wanted_xml))
    return [
        f"{key} {_show(existing[key])}, not {_show(value)}"
        for key, value in wanted.items()
        if value and existing[key] != value
    ]


def pool_source(root: etree._Element) -> str:
    """Where a pool's storage comes from, in a few words for people ("" for a directory)."""
    kind = root.get("type")
    host_name = _attr(root, "source/host", "name") or ""
    directory = _attr(root, "source/dir", "path") or ""
    name = root.findtext("source/name") or ""
    devices = ", ".join(d.get("path", "") for d in root.iterfind("source/device"))
    if kind == "dir":
        return ""
    if kind == "netfs":
        return f"{host_name}:{directory}"
    if kind == "gluster":
        sub = directory if directory not in ("", "/") else ""
        return f"{host_name}:/{name}{sub}"
    if kind == "iscsi":
        return f"{host_name}/{devices}"
    if kind in ("logical", "zfs"):
        return f"{name} ({devices})" if name and devices else name or devices
    if kind == "scsi":
        return _attr(root, "source/adapter", "name") or _attr(root, "source/adapter", "wwpn") or ""
    parts = [f"{host_name}:{directory}" if host_name else directory, name, devices]
    return " ".join(p for p in parts if p)


# -- reading -----------------------------------------------------------------------------------
def _size(path: str) -> int:
    """A file's size as this machine sees it (0 when it is no file here: a device, another
    machine's path under the test driver): the wizard shows it beside the name."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _offered(names: Iterable[str], path: str) -> list[VolumeInfo]:
    """ISOs and disk images by name (a volume's path in a dir or LVM pool is the pool's path
    plus its name): no libvirt call per volume, a stat of the files offered."""
    offered = []
    for name in names:
        lower = name.lower()
        if name.startswith("."):
            continue
        where = f"{path.rstrip('/')}/{name}"
        if lower.endswith(".iso"):
            offered.append(VolumeInfo(name=name, path=where, kind="iso"))
        elif lower.endswith(_IMAGE_SUFFIXES):
            offered.append(VolumeInfo(name=name, path=where, kind="image"))
    offered = offered[:MAX_POOL_VOLUMES]
    for volume in offered:
        volume.capacity_bytes = _size(volume.path)
    return offered


def _volume_names(pool: libvirt.virStoragePool, kind: str, *, refresh: bool) -> list[str] | None:
    if refresh and kind in _REFRESHED_ON_READ:
        with contextlib.suppress(libvirt.libvirtError):  # e.g. busy creating a volume: list what it knows
            pool.refresh(0)  # files copied in by hand (an ISO) appear only after a refresh
    try:
        # An upload's hidden files (its bytes so far, its record) are no volumes, not even to count.
        return sorted(name for name in pool.listVolumes() if not is_upload_file(name))
    except libvirt.libvirtError as err:
        if is_connection_lost(err):
            raise
        log.warning("cannot list the volumes of a storage pool: %s", err.get_error_message() or err)
        return None


def read_pool(pool: libvirt.virStoragePool, *, refresh: bool = True) -> PoolInfo:
    """Blocking: one pool, in a few calls whatever its number of volumes. With `refresh`, a
    directory-like pool is rescanned first (libvirt then emits a refresh event for it)."""
    root = _parse(pool.XMLDesc(0))
    active = bool(pool.isActive())
    state, capacity, allocation, available = pool.info()
    persistent = bool(pool.isPersistent())
    kind = root.get("type") or "unknown"
    path = root.findtext("target/path")
    names = _volume_names(pool, kind, refresh=refresh) if active else None
    return PoolInfo(
        name=root.findtext("name") or str(pool.name()),
        type=kind,
        active=active,
        path=path,
        capacity_bytes=int(capacity),
        allocation_bytes=int(allocation),
        available_bytes=int(available),
        volumes=_offered(names, path) if names and path else [],
        state=POOL_STATE_NAMES.get(state, "inactive" if not active else "running"),
        autostart=bool(persistent and pool.autostart()),
        persistent=persistent,
        volume_count=len(names) if names is not None else None,
        source=pool_source(root),
    )


def supported_pool_types(conn: libvirt.virConnect) -> list[str]:
    """The POOL_TYPES this host's libvirt can run, in POOL_TYPES order (all of them when libvirt
    cannot say: the test driver, libvirt before 5.2)."""
    try:
        xml = str(conn.getStoragePoolCapabilities(0))
    except libvirt.libvirtError as err:
        if is_connection_lost(err):
            raise
        return list(POOL_TYPES)
    root = _parse(xml)
    supported = {p.get("type") for p in root.iterfind("pool") if p.get("supported") == "yes"}
    return [kind for kind in POOL_TYPES if kind in supported]


# -- who uses a pool ---------------------------------------------------------------------------
def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class _PoolUse:
    """How a domain's disk can point into one pool: by pool name, by a path under the pool's
    target, by one of its volumes' paths, or (gluster) by the volume on the network."""

    def __init__(self, pool: libvirt.virStoragePool, root: etree._Element) -> None:
        self.name = root.findtext("name") or str(pool.name())
        kind = root.get("type")
        target = root.findtext("target/path")
        self.target = target if kind in _TARGET_HOLDS_VOLUMES and target else None
        self.volume_paths: frozenset[str] = frozenset()
        if kind not in _TARGET_HOLDS_VOLUMES and pool.isActive():
            # A disk pool's /dev or an iSCSI pool's /dev/disk/by-path holds others' devices too.
            self.volume_paths = frozenset(vol.path() for vol in pool.listAllVolumes(0))
        self.gluster = (
            (root.findtext("source/name") or "", root.find("source/host")) if kind == "gluster" else None
        )

    def _source_uses(self, source: etree._Element) -> bool:
        if source.get("pool") == self.name:
            return True
        path = source.get("file") or source.get("dev") or source.get("dir")
        if path and (path in self.volume_paths or (self.target is not None and _inside(path, self.target))):
            return True
        if self.gluster is not None and source.get("protocol") == "gluster":
            volume, host = self.gluster
            hosts = {h.get("name") for h in source.iterfind("host")}
            return (source.get("name") or "").split("/")[0] == volume and (
                host is None or host.get("name") in hosts
            )
        return False

    def used_by(self, domain_xml: str) -> bool:
        # Every <source> of every disk, backing images included (a running domain's XML lists them).
        return any(
            self._source_uses(source)
            for disk in _parse(domain_xml).iterfind("devices/disk")
            for source in disk.iter("source")
        )


def pool_users(conn: libvirt.virConnect, pool: libvirt.virStoragePool, *, running_only: bool) -> list[str]:
    """Names of the domains on this host with a disk in `pool`: running ones only, or every
    defined one (a running domain's next-boot definition counts too)."""
    use = _PoolUse(pool, _parse(pool.XMLDesc(0)))
    flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if running_only else 0
    users = []
    for dom in conn.listAllDomains(flags):
        try:
            xmls = [dom.XMLDesc(0)]
            if not running_only and dom.isActive() and dom.isPersistent():
                xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if any(use.used_by(xml) for xml in xmls):
                users.append(str(dom.name()))
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise  # undefined since the listing: it uses nothing any more
    return sorted(users)


# -- operations --------------------------------------------------------------------------------
def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool:
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise NotFound(f"no storage pool {name!r} on this host") from err
        raise


def _lookup_or_none(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    try:
        return _lookup(conn, name)
    except NotFound:
        return None


def _build(pool: libvirt.virStoragePool, kind: str, name: str) -> None:
    flags = _BUILD_FLAGS.get(kind, 0)
    try:
        try:
            pool.build(flags)
        except libvirt.libvirtError as err:
            if not flags or err.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                raise
            # A driver that does not know the flag (test://). Without it libvirt writes over
            # nothing it finds either: it makes no file system at all, checks devices for LVM.
            pool.build(0)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_STORAGE_POOL_BUILT:
            raise
        raise Conflict(
            f"build: storage pool {name!r} was not built, as its devices already hold data "
            f"({err.get_error_message() or err}); define it without build to use what is there"
        ) from err


def _undo_define(pool: libvirt.virStoragePool, name: str) -> None:
    """A define that failed half-way (build, start): take the definition back, so that a retry
    starts afresh and an error never leaves a pool nobody asked for."""
    try:
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    except libvirt.libvirtError as err:
        log.warning("could not take back the definition of storage pool %s: %s", name, err)


def define_pool_sync(conn: libvirt.virConnect, spec: PoolSpec) -> tuple[PoolResult, bool]:
    """Define (then build, start, autostart as asked); returns the result and whether this call
    defined it. The same pool defined again is answered as it is: retries are harmless."""
    supported = supported_pool_types(conn)
    if spec.type not in supported:
        raise InvalidSpec(
            f"type: this host's libvirt cannot run storage pools of type {spec.type} "
            f"(it can run {', '.join(supported) or 'none'})"
        )
    xml = pool_xml(spec)
    existing = _lookup_or_none(conn, spec.name)
    if existing is not None:
        differences = definition_differences(existing.XMLDesc(0), xml)
        if differences:
            raise Conflict(
                f"storage pool {spec.name!r} already exists with another definition "
                f"({'; '.join(differences)})"
            )
        return PoolResult(
            pool=read_pool(existing, refresh=False), detail=f"storage pool {spec.name!r} is already defined"
        ), False
    pool = conn.storagePoolDefineXML(xml, 0)
    done = ["defined"]
    step = ""
    try:
        if spec.build:
            step = "building it"
            _build(pool, spec.type, spec.name)
            done.append("built")
        if spec.start:
            step = "starting it"
            pool.create(0)
            done.append("started")
        if spec.autostart:
            step = "setting it to start with the host"
            pool.setAutostart(1)
            done.append("set to start with the host")
    except libvirt.libvirtError as err:
        _undo_define(pool, spec.name)
        if is_connection_lost(err):
            raise
        # A mount that fails (an NFS server away) is an answer for people, not only an error.
        raise from_libvirt(err, what=f"storage pool {spec.name!r} was not defined: {step} failed") from err
    except BaseException:
        _undo_define(pool, spec.name)
        raise
    log.info("storage pool %s (%s): %s", spec.name, spec.type, ", ".join(done))
    return PoolResult(
        pool=read_pool(pool, refresh=False), detail=f"storage pool {spec.name!r}: {', '.join(done)}"
    ), True


def start_pool_sync(conn: libvirt.virConnect, name: str) -> PoolResult:
    pool = _lookup(conn, name)
    if pool.isActive():
        return PoolResult(
            pool=read_pool(pool, refresh=False), detail=f"storage pool {name!r} was already running"
        )
    pool.create(0)
    log.info("started storage pool %s", name)
    return PoolResult(pool=read_pool(pool, refresh=False), detail=f"storage pool {name!r} started")


def _in_use(name: str, users: list[str], advice: str) -> Conflict:
    return Conflict(f"storage pool {name!r} is used by {', '.join(users)}: {advice}")


def _destroy(pool: libvirt.virStoragePool) -> None:
    try:
        pool.destroy()
    except libvirt.libvirtError as err:
        # It stopped by another hand since isActive(): that is the goal.
        if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or pool.isActive():
            raise


def stop_pool_sync(conn: libvirt.virConnect, name: str) -> PoolResult:
    pool = _lookup(conn, name)
    if not pool.isActive():
        return PoolResult(
            pool=read_pool(pool, refresh=False), detail=f"storage pool {name!r} was already stopped"
        )
    users = pool_users(conn, pool, running_only=True)
    if users:
        raise _in_use(name, users, "shut them off before stopping it")
    persistent = bool(pool.isPersistent())
    _destroy(pool)
    log.info("stopped storage pool %s", name)
    if not persistent:  # a transient pool exists only while it runs
        return PoolResult(pool=None, detail=f"storage pool {name!r} stopped (it was transient: it is gone)")
    return PoolResult(pool=read_pool(pool, refresh=False), detail=f"storage pool {name!r} stopped")


def refresh_pool_sync(conn: libvirt.virConnect, name: str) -> PoolResult:
    pool = _lookup(conn, name)
    if not pool.isActive():
        raise Conflict(f"storage pool {name!r} is not running: start it to refresh it")
    pool.refresh(0)
    info = read_pool(pool, refresh=False)
    return PoolResult(pool=info, detail=f"storage pool {name!r} refreshed: {info.volume_count} volume(s)")


def autostart_pool_sync(conn: libvirt.virConnect, name: str, autostart: bool) -> PoolResult:
    pool = _lookup(conn, name)
    if not pool.isPersistent():
        raise Conflict(f"storage pool {name!r} is transient: only a defined pool can start with the host")
    pool.setAutostart(1 if autostart else 0)
    log.info("storage pool %s autostart %s", name, "on" if autostart else "off")
    what = "starts with the host" if autostart else "no longer starts with the host"
    return PoolResult(pool=read_pool(pool, refresh=False), detail=f"storage pool {name!r} {what}")


def delete_pool_sync(conn: libvirt.virConnect, name: str, delete_storage: bool) -> PoolResult:
    """Stop (if running), delete its storage (if asked), undefine. Refused while any domain
    defined here has a disk in it, and, with its storage, while it holds volumes."""
    pool = _lookup(conn, name)
    kind = _parse(pool.XMLDesc(0)).get("type") or "unknown"
    users = pool_users(conn, pool, running_only=False)
    if users:
        raise _in_use(name, users, "delete those domains, or their disks in it, first")
    persistent = bool(pool.isPersistent())
    if delete_storage:
        if kind not in POOL_BUILDABLE:
            raise InvalidSpec(
                f"delete_storage: the storage of a pool of type {kind} is not this host's to delete "
                "(delete the pool without it)"
            )
        if not persistent:
            raise InvalidSpec(
                f"delete_storage: storage pool {name!r} is transient, so stopping it removes it "
                "before its storage could be deleted (delete it without its storage)"
            )
        if pool.isActive() and kind in _STORAGE_HOLDS_VOLUMES:
            pool.refresh(0)  # files copied in by hand count
            count = int(pool.numOfVolumes())
            if count:
                raise Conflict(
                    f"storage pool {name!r} still holds {count} volume(s): delete them first, "
                    "or delete the pool without its storage"
                )
    done = []
    if pool.isActive():
        _destroy(pool)
        done.append("stopped")
    if delete_storage:
        try:
            pool.delete(0)
        except libvirt.libvirtError as err:
            if is_connection_lost(err):
                raise
            raise Conflict(
                f"the storage of storage pool {name!r} could not be deleted "
                f"({err.get_error_message() or err}): the pool is stopped and still defined"
            ) from err
        done.append("storage deleted")
    if persistent:
        pool.undefine()
        done.append("undefined")
    log.info("deleted storage pool %s: %s", name, ", ".join(done))
    return PoolResult(pool=None, detail=f"storage pool {name!r}: {', '.join(done)}")


class PoolService:
    """The pool operations on the agent's connection; `changed` is called after each one (the
    event hub then publishes fresh resources, whatever libvirt reported)."""

    def __init__(self, conn: LibvirtConnection, *, changed: PoolsChanged) -> None:
        self._conn = conn
        self._changed = changed

    async def define(self, spec: PoolSpec) -> tuple[PoolResult, bool]:
        try:
            return await self._conn.call(lambda c: define_pool_sync(c, spec), what="defining storage pool")
        finally:
            self._changed()

    async def start(self, name: str) -> PoolResult:
        try:
            return await self._conn.call(lambda c: start_pool_sync(c, name), what="starting storage pool")
        finally:
            self._changed()

    async def stop(self, name: str) -> PoolResult:
        try:
            return await self._conn.call(lambda c: stop_pool_sync(c, name), what="stopping storage pool")
        finally:
            self._changed()

    async def refresh(self, name: str) -> PoolResult:
        try:
            return await self._conn.call(lambda c: refresh_pool_sync(c, name), what="refreshing storage pool")
        finally:
            self._changed()

    async def set_autostart(self, name: str, autostart: bool) -> PoolResult:
        try:
            return await self._conn.call(
                lambda c: autostart_pool_sync(c, name, autostart), what="setting storage pool autostart"
            )
        finally:
            self._changed()

    async def delete(self, name: str, *, delete_storage: bool) -> PoolResult:
        try:
            return await self._conn.call(
                lambda c: delete_pool_sync(c, name, delete_storage), what="deleting storage pool"
            )
        finally:
            self._changed()
