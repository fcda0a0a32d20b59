"""The <disk> elements of a domain after it was defined, with lxml only: the element of a disk or
CD-ROM drive to attach, its bus and target, a drive's element with another disc, and what differs
between a running domain's live definition and its definition for the next boot."""

from __future__ import annotations

from lxml import etree

from agent.domxml import _BUS_PREFIX, _parse, _sub, disk_target
from agent.protocol import DiskInfo

# libvirt's OS types of paravirtualised Xen guests ("linux" is an old name of "xen").
_PV_OS_TYPES = frozenset({"xen", "linux", "xenpvh"})
CDROM_BUSES = ("sata", "scsi", "ide")


def domain_root(xml: str) -> etree._Element:
    return _parse(xml)


def _disks(root: etree._Element) -> list[etree._Element]:
    return [d for d in root.iterfind("devices/disk") if d.get("device", "disk") in ("disk", "cdrom")]


def find_disk(root: etree._Element, target: str) -> etree._Element | None:
    """The disk or CD-ROM drive of a domain at `target` (vdb, hdc ...), if any."""
    for disk in _disks(root):
        element = disk.find("target")
        if element is not None and element.get("dev") == target:
            return disk
    return None


def disk_targets(root: etree._Element) -> set[str]:
    """Every target a disk, CD-ROM or floppy of the domain holds."""
    return {t.get("dev", "") for t in root.iterfind("devices/disk/target")}


def attach_bus(root: etree._Element, device: str, asked: str | None) -> str:
    """The bus a new disk or CD-ROM drive goes on, as at define (domxml): a PV/PVH guest has only
    Xen's own, libxl has no virtio; a KVM/QEMU disk is virtio unless asked otherwise. A CD-ROM
    drive goes where the domain's drives already are, else on SATA on a q35 machine (it has no
    IDE) or next to SATA disks, else on IDE."""
    os_type = root.find("os/type")
    xen = root.get("type") == "xen"
    if os_type is not None and (os_type.text or "").strip() in _PV_OS_TYPES:
        return "xen"
    if device == "cdrom":
        if asked is not None and asked not in CDROM_BUSES:
            raise ValueError(f"a CD-ROM drive cannot be on {asked}: use sata, scsi or ide")
        if asked is not None:
            return asked
        buses = [
            (d.get("device", "disk"), t.get("bus"))
            for d in _disks(root)
            if (t := d.find("target")) is not None and t.get("bus")
        ]
        for kind, bus in buses:
            if kind == "cdrom" and bus in CDROM_BUSES:
                return str(bus)
        machine = os_type.get("machine", "") if os_type is not None else ""
        if not xen and ("q35" in machine or any(bus == "sata" for _kind, bus in buses)):
            return "sata"
        return "ide"
    bus = asked or "virtio"
    if xen and bus in ("virtio", "scsi"):
        return "xen"
    if not xen and bus == "xen":
        raise ValueError("the xen bus is for Xen guests: use virtio, sata, scsi or ide")
    return bus


def next_target(used: set[str], bus: str) -> str:
    """The first free target name on `bus`'s prefix: vdb after vda, sdc after sda and sdb ..."""
    prefix = _BUS_PREFIX[bus]
    index = 0
    while (target := disk_target(index, prefix)) in used:
        index += 1
    return target


def render_disk(
    *,
    device: str,
    bus: str,
    target: str,
    path: str | None,
    fmt: str = "raw",
    block: bool = False,
    readonly: bool = False,
) -> str:
    """The <disk> element of a disk (a volume's `path` in format `fmt`) or a CD-ROM drive (an ISO,
    or no `path`: an empty drive), as domxml renders them at define."""
    disk = etree.Element("disk", type="block" if block else "file", device=device)
    _sub(disk, "driver", name="qemu", type="raw" if device == "cdrom" else fmt)
    if path is not None:
        if block:
            _sub(disk, "source", dev=path)
        else:
            _sub(disk, "source", file=path)
    _sub(disk, "target", dev=target, bus=bus)
    if readonly or device == "cdrom":
        _sub(disk, "readonly")
    return etree.tostring(disk, encoding="unicode")


def disk_xml(disk: etree._Element) -> str:
    """A disk element of a domain's XML as a document of its own (to detach it)."""
    return etree.tostring(disk, encoding="unicode")


def media_xml(drive: etree._Element, path: str | None) -> str:
    """A CD-ROM drive's element (as the domain has it) with the ISO at `path` in it, or empty: what
    libvirt's update of a device takes (as `virsh change-media` builds it)."""
    changed = etree.fromstring(etree.tostring(drive))
    for old in (*changed.findall("source"), *changed.findall("backingStore")):
        changed.remove(old)
    changed.set("type", "file")
    if path is not None:
        source = etree.Element("source", file=path)
        driver = changed.find("driver")
        # <source> goes right after <driver> (libvirt's own order), or first.
        changed.insert(changed.index(driver) + 1 if driver is not None else 0, source)
    return etree.tostring(changed, encoding="unicode")


def with_pending(live: list[DiskInfo], config: list[DiskInfo]) -> list[DiskInfo]:
    """A running domain's disks (`live`) marked with what its next boot (`config`) changes: a
    disk only in the config is listed too (attach), one only live will go (detach), a CD-ROM drive
    holding another disc there changes it (media; `path` stays the live one)."""
    planned = {disk.target: disk for disk in config}
    disks: list[DiskInfo] = []
    for disk in live:
        later = planned.get(disk.target)
        if later is None:
            disks.append(disk.model_copy(update={"pending": "detach"}))
        elif disk.device == "cdrom" and later.device == "cdrom" and disk.path != later.path:
            disks.append(disk.model_copy(update={"pending": "media"}))
        else:
            disks.append(disk)
    running = {disk.target for disk in live}
    disks += [disk.model_copy(update={"pending": "attach"}) for disk in config if disk.target not in running]
    return disks
