"""Storage pools and volumes: the default pool, disk volumes, and boot-file path checks.

All functions here are blocking libvirt calls; callers run them off the event loop.
"""

from __future__ import annotations

import logging
import os

import libvirt
from lxml import etree

from agent.domxml import ResolvedBoot
from agent.errors import Conflict, InvalidSpec, from_libvirt
from agent.protocol import DiskSpec, DomainSpec, KernelBoot

log = logging.getLogger(__name__)

DEFAULT_POOL = "default"
GIB = 1024**3


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


def resolve_boot(conn: libvirt.virConnect, spec: DomainSpec, default_dir: str) -> ResolvedBoot:
    """Resolve the boot files of `spec` (relative paths are taken in the default pool).

    Symlinks and `..` are resolved first, so nothing outside a pool can be booted."""
    pool_dirs = active_pool_paths(conn)
    if isinstance(spec.boot, KernelBoot):
        kernel = _resolve_one("boot.kernel", spec.boot.kernel, pool_dirs, default_dir)
        initrd = None
        if spec.boot.initrd:
            initrd = _resolve_one("boot.initrd", spec.boot.initrd, pool_dirs, default_dir)
        return ResolvedBoot(kernel=kernel, initrd=initrd, cmdline=spec.boot.cmdline)
    return ResolvedBoot(iso=_resolve_one("boot.iso", spec.boot.iso, pool_dirs, default_dir))


def volume_name(spec: DomainSpec, index: int) -> str:
    """`<name>-<first 8 hex of the uuid>-disk<N>.qcow2`: a retry of the same spec finds its own
    volume again, but a new domain reusing an old (deleted, disks kept) name never picks up the
    old domain's disk."""
    return f"{spec.name}-{spec.uuid.hex[:8]}-disk{index}.qcow2"


def _volume_xml(name: str, disk: DiskSpec) -> str:
    root = etree.Element("volume")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "capacity", unit="bytes").text = str(int(disk.size_gib * GIB))
    etree.SubElement(root, "allocation", unit="bytes").text = "0"
    target = etree.SubElement(root, "target")
    etree.SubElement(target, "format", type=disk.format)
    return etree.tostring(root, encoding="unicode")


def create_volumes(
    conn: libvirt.virConnect, spec: DomainSpec
) -> tuple[list[str], list[libvirt.virStorageVol]]:
    """Create (or reuse, after a retried request) one volume per disk.

    Returns the volume paths and the volumes created by this call (to roll back on failure)."""
    paths: list[str] = []
    created: list[libvirt.virStorageVol] = []
    try:
        for index, disk in enumerate(spec.disks):
            try:
                pool = conn.storagePoolLookupByName(disk.pool)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise InvalidSpec(f"disks.{index}.pool: no storage pool {disk.pool!r}") from err
                raise
            if not pool.isActive():
                raise Conflict(f"disks.{index}.pool: storage pool {disk.pool!r} is not active")
            name = volume_name(spec, index)
            try:
                vol = pool.storageVolLookupByName(name)
                log.info("reusing existing volume %s in pool %s", name, disk.pool)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
                vol = pool.createXML(_volume_xml(name, disk), 0)
                created.append(vol)
            paths.append(vol.path())
    except BaseException:
        delete_volumes(created)
        raise
    return paths, created


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
