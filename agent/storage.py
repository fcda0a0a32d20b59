"""Storage pools and volumes: the default pool, disk volumes, and boot-file path checks.

All functions here are blocking libvirt calls; callers run them off the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os

import libvirt
from lxml import etree

from agent.cloudinit import build_seed_iso
from agent.domxml import ResolvedBoot, ResolvedDisk
from agent.errors import Conflict, InvalidSpec, from_libvirt
from agent.protocol import (
    CdromBoot,
    DiskBoot,
    DiskSpec,
    DomainSpec,
    IsoBoot,
    KernelBoot,
    NetworkInstall,
    volume_name,
)

log = logging.getLogger(__name__)

DEFAULT_POOL = "default"
GIB = 1024**3
# The agent's own files in a directory pool while an upload or fetch is under way (agent/uploads.py):
# hidden, and never volumes, whatever libvirt lists (it lists dot files in a dir pool).
UPLOAD_FILE_PREFIX = ".domus-upload-"


def is_upload_file(name: str) -> bool:
    return name.startswith(UPLOAD_FILE_PREFIX)


def _pool_path(pool: libvirt.virStoragePool) -> str | None:
    root = etree.fromstring(pool.XMLDesc(0).encode())
    return root.findtext("target/path")


def ensure_default_pool(conn: libvirt.virConnect, path: str) -> str:
    """Make sure the `default` dir pool exists, is built, active and autostarted, as
    virt-manager does on first use. Returns the pool's target path."""
    try:
        pool = conn.storagePoolLookupByName(DEFAULT_POOL)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        root = etree.Element("pool", type="dir")
        etree.SubElement(root, "name").text = DEFAULT_POOL
        target = etree.SubElement(root, "target")
        etree.SubElement(target, "path").text = path
        pool = conn.storagePoolDefineXML(etree.tostring(root, encoding="unicode"), 0)
        pool.build(0)
        log.info("defined storage pool %r at %s", DEFAULT_POOL, path)
    if not pool.isActive():
        pool.create(0)
    if not pool.autostart():
        pool.setAutostart(1)
    return _pool_path(pool) or path


def active_pool_paths(conn: libvirt.virConnect) -> list[str]:
    flags = libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE
    paths = [_pool_path(pool) for pool in conn.listAllStoragePools(flags)]
    return [os.path.realpath(p) for p in paths if p]


def _resolve_one(field: str, value: str, pool_dirs: list[str], default_dir: str) -> str:
    candidate = value if os.path.isabs(value) else os.path.join(default_dir, value)
    real = os.path.realpath(candidate)
    if not any(os.path.commonpath([real, d]) == d for d in pool_dirs):
        raise InvalidSpec(f"{field}: {value!r} is not inside a storage pool directory")
    if not os.path.isfile(real):
        raise InvalidSpec(f"{field}: {value!r} does not exist")
    return real


def resolve_file(conn: libvirt.virConnect, field: str, value: str, default_dir: str) -> str:
    """A file the user names (an ISO): its real path, inside an active pool (relative paths are
    taken in the default pool), and there (InvalidSpec otherwise)."""
    return _resolve_one(field, value, active_pool_paths(conn), default_dir)


def resolve_boot(
    conn: libvirt.virConnect,
    spec: DomainSpec,
    default_dir: str,
    *,
    installer: tuple[str, str] | None = None,
    seed_iso: str | None = None,
) -> ResolvedBoot:
    """Resolve the boot files of `spec` (relative paths are taken in the default pool).

    Symlinks and `..` are resolved first, so nothing outside a pool can be booted. `installer`
    is the (kernel, initrd) of a network install once fetched; `seed_iso` a cloud-init seed."""
    pool_dirs = active_pool_paths(conn)
    boot = spec.boot
    if isinstance(boot, KernelBoot):
        kernel = _resolve_one("boot.kernel", boot.kernel, pool_dirs, default_dir)
        initrd = None
        if boot.initrd:
            initrd = _resolve_one("boot.initrd", boot.initrd, pool_dirs, default_dir)
        return ResolvedBoot(kernel=kernel, initrd=initrd, cmdline=boot.cmdline)
    if isinstance(boot, IsoBoot):
        return ResolvedBoot(iso=_resolve_one("boot.iso", boot.iso, pool_dirs, default_dir))
    if isinstance(boot, CdromBoot):
        if not os.path.exists(boot.device):
            raise InvalidSpec(f"boot.device: this host has no CD/DVD drive at {boot.device}")
        return ResolvedBoot(cdrom_device=boot.device)
    if isinstance(boot, NetworkInstall):
        if installer is None:
            raise ValueError("a network install needs its fetched kernel and initrd")
        return ResolvedBoot(kernel=installer[0], initrd=installer[1], cmdline=boot.cmdline)
    return ResolvedBoot(seed_iso=seed_iso)


def write_seed_iso(conn: libvirt.virConnect, spec: DomainSpec, default_dir: str) -> str | None:
    """Build the cloud-init seed ISO of `spec` into the default pool (once: a retry reuses it)."""
    boot = spec.boot
    if not isinstance(boot, DiskBoot) or boot.cloud_init is None:
        return None
    path = os.path.join(default_dir, f"{spec.name}-{spec.uuid.hex[:8]}-cidata.iso")
    if not os.path.isfile(path):
        partial = path + ".part"
        with open(partial, "wb") as out:
            out.write(build_seed_iso(boot.cloud_init))
        os.chmod(partial, 0o644)
        os.replace(partial, path)
        with contextlib.suppress(libvirt.libvirtError):  # so that the pool lists it as a volume
            conn.storagePoolLookupByName(DEFAULT_POOL).refresh(0)
    return path


def _pool_type(pool: libvirt.virStoragePool) -> str:
    return str(etree.fromstring(pool.XMLDesc(0).encode()).get("type", "dir"))


def _volume_xml(name: str, disk: DiskSpec, *, logical: bool, backing: ResolvedDisk | None) -> str:
    assert disk.size_gib is not None
    capacity = int(disk.size_gib * GIB)
    root = etree.Element("volume")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    # Preallocated: the whole size is reserved now; sparse: blocks are taken as the guest writes.
    allocation = capacity if disk.allocation == "preallocated" or logical else 0
    etree.SubElement(root, "allocation", unit="bytes").text = str(allocation)
    if not logical:
        target = etree.SubElement(root, "target")
        etree.SubElement(target, "format", type=disk.format)
    if backing is not None:
        store = etree.SubElement(root, "backingStore")
        etree.SubElement(store, "path").text = backing.path
        etree.SubElement(store, "format", type=backing.format)
    return etree.tostring(root, encoding="unicode")


def existing_volume(conn: libvirt.virConnect, field: str, path: str, default_dir: str) -> ResolvedDisk:
    """A volume the user names (an existing disk, or a base image): it must be a volume of an
    active pool, after symlinks and `..` are resolved."""
    candidate = path if os.path.isabs(path) else os.path.join(default_dir, path)
    real = os.path.realpath(candidate)
    try:
        vol = conn.storageVolLookupByPath(real)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise InvalidSpec(f"{field}: {path!r} is not a volume of a storage pool on this host") from err
        raise
    root = etree.fromstring(vol.XMLDesc(0).encode())
    fmt = root.find("target/format")
    vol_type = vol.info()[0]
    return ResolvedDisk(
        path=vol.path(),
        format=fmt.get("type", "raw") if fmt is not None and fmt.get("type") in ("qcow2", "raw") else "raw",
        block=vol_type == libvirt.VIR_STORAGE_VOL_BLOCK,
    )


def volume_or_none(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise
        return None


def disk_pool(conn: libvirt.virConnect, disk: DiskSpec, field: str) -> tuple[libvirt.virStoragePool, bool]:
    """The running pool a new disk's volume goes in, and whether it is an LVM (logical) pool."""
    try:
        pool = conn.storagePoolLookupByName(disk.pool)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise InvalidSpec(f"{field}.pool: no storage pool {disk.pool!r}") from err
        raise
    if not pool.isActive():
        raise Conflict(f"{field}.pool: storage pool {disk.pool!r} is not active")
    return pool, _pool_type(pool) == "logical"


def create_disk_volume(
    conn: libvirt.virConnect,
    pool: libvirt.virStoragePool,
    name: str,
    disk: DiskSpec,
    *,
    logical: bool,
    field: str,
    default_dir: str,
) -> libvirt.virStorageVol:
    """Make volume `name` in `pool` for a new disk: `disk.size_gib`, sparse or preallocated, on its
    base image (`disk.backing`) if it has one."""
    backing = None
    if disk.backing is not None:
        backing = existing_volume(conn, f"{field}.backing", disk.backing, default_dir)
        base_capacity = conn.storageVolLookupByPath(backing.path).info()[1]
        if disk.size_gib is not None and disk.size_gib * GIB < base_capacity:
            raise InvalidSpec(
                f"{field}.size_gib: smaller than its base image ({base_capacity / GIB:.1f} GiB)"
            )
    flags = 0
    if disk.allocation == "preallocated" and disk.format == "qcow2" and not logical:
        flags = libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA
    xml = _volume_xml(name, disk, logical=logical, backing=backing)
    return pool.createXML(xml, flags)


def resolved_volume(vol: libvirt.virStorageVol, disk: DiskSpec, *, logical: bool) -> ResolvedDisk:
    """How a new disk's volume is attached: its path, format and whether it is a block device."""
    fmt = "raw" if logical else disk.format
    return ResolvedDisk(path=vol.path(), format=fmt, block=vol.info()[0] == libvirt.VIR_STORAGE_VOL_BLOCK)


def create_volumes(
    conn: libvirt.virConnect, spec: DomainSpec, default_dir: str
) -> tuple[list[ResolvedDisk], list[libvirt.virStorageVol]]:
    """Create (or reuse, after a retried request) one volume per new disk; resolve existing ones.

    Returns the disks and the volumes created by this call (to roll back on failure)."""
    disks: list[ResolvedDisk] = []
    created: list[libvirt.virStorageVol] = []
    try:
        for index, disk in enumerate(spec.disks):
            field = f"disks.{index}"
            if disk.existing is not None:
                disks.append(existing_volume(conn, f"{field}.existing", disk.existing, default_dir))
                continue
            pool, logical = disk_pool(conn, disk, field)
            name = volume_name(spec, index, logical=logical)
            vol = volume_or_none(pool, name)
            if vol is not None:
                log.info("reusing existing volume %s in pool %s", name, disk.pool)
            else:
                vol = create_disk_volume(
                    conn, pool, name, disk, logical=logical, field=field, default_dir=default_dir
                )
                created.append(vol)
            disks.append(resolved_volume(vol, disk, logical=logical))
    except BaseException:
        delete_volumes(created)
        raise
    return disks, created


def free_volume_name(pool: libvirt.virStoragePool, base: str, disk: DiskSpec, *, logical: bool) -> str:
    """`<base>.qcow2` (`.img` for raw, no suffix on LVM), or `<base>-2.qcow2` and on when a volume
    (or a file the pool had not listed yet) holds the name: a new volume never replaces one."""
    with contextlib.suppress(libvirt.libvirtError):
        pool.refresh(0)  # files copied in by hand since the last scan hold their names too
    suffix = "" if logical else (".qcow2" if disk.format == "qcow2" else ".img")
    number = 1
    while True:
        name = f"{base}{'' if number == 1 else f'-{number}'}{suffix}"
        if volume_or_none(pool, name) is None:
            return name
        number += 1


def delete_volumes(volumes: list[libvirt.virStorageVol]) -> None:
    for vol in volumes:
        try:
            vol.delete(0)
        except libvirt.libvirtError as err:
            log.warning("could not roll back volume %s: %s", vol.name(), err)


def delete_volume_by_path(conn: libvirt.virConnect, path: str) -> bool:
    """Delete the storage volume at `path`; False when no pool knows that path."""
    try:
        vol = conn.storageVolLookupByPath(path)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return False
        raise from_libvirt(err, what=f"looking up volume {path}") from err
    try:
        vol.delete(0)
    except libvirt.libvirtError as err:
        raise from_libvirt(err, what=f"deleting volume {path}") from err
    return True
