"""Domain XML rendering (from a DomainSpec) and parsing (into DiskInfo), with lxml only."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from agent.protocol import DiskInfo, DomainSpec, KernelBoot

DOMUS_NS = "https://domus.dev/xmlns/domain/1"
_DOMUS = f"{{{DOMUS_NS}}}"


@dataclass(frozen=True)
class ResolvedBoot:
    """Boot files after path checks: absolute, real paths inside a storage pool."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    iso: str | None = None


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrib=attrs)
    if text is not None:
        element.text = text
    return element


def disk_target(index: int) -> str:
    """vda, vdb, ... vdz, vdaa (virtio block device names)."""
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return f"vd{letters}"


def render_domain_xml(
    spec: DomainSpec, *, domain_type: str, boot: ResolvedBoot, disk_paths: list[str]
) -> str:
    """Render the libvirt domain XML for `spec`.

    `domain_type` is kvm, qemu, xen or test; `disk_paths` are the volume paths, one per
    `spec.disks` entry, in order.
    """
    if len(disk_paths) != len(spec.disks):
        raise ValueError("one volume path per disk is required")
    root = etree.Element("domain", type=domain_type)
    _sub(root, "name", spec.name)
    _sub(root, "uuid", str(spec.uuid))
    metadata = _sub(root, "metadata")
    domus = etree.SubElement(metadata, f"{_DOMUS}domain", nsmap={"domus": DOMUS_NS})
    _sub(domus, f"{_DOMUS}spec", spec.model_dump_json())
    memory_kib = str(spec.memory_mib * 1024)
    _sub(root, "memory", memory_kib, unit="KiB")
    _sub(root, "currentMemory", memory_kib, unit="KiB")
    _sub(root, "vcpu", str(spec.vcpus), placement="static")

    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm")
    if isinstance(spec.boot, KernelBoot):
        if boot.kernel is None:
            raise ValueError("kernel boot needs a resolved kernel path")
        _sub(os_el, "kernel", boot.kernel)
        if boot.initrd is not None:
            _sub(os_el, "initrd", boot.initrd)
        if boot.cmdline:
            _sub(os_el, "cmdline", boot.cmdline)
    else:
        _sub(os_el, "boot", dev="cdrom")
        _sub(os_el, "boot", dev="hd")

    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")

    devices = _sub(root, "devices")
    for index, (disk, path) in enumerate(zip(spec.disks, disk_paths, strict=True)):
        disk_el = _sub(devices, "disk", type="file", device="disk")
        _sub(disk_el, "driver", name="qemu", type=disk.format)
        _sub(disk_el, "source", file=path)
        _sub(disk_el, "target", dev=disk_target(index), bus="virtio")
    if boot.iso is not None:
        cdrom = _sub(devices, "disk", type="file", device="cdrom")
        _sub(cdrom, "driver", name="qemu", type="raw")
        _sub(cdrom, "source", file=boot.iso)
        _sub(cdrom, "target", dev="hdc", bus="ide")
        _sub(cdrom, "readonly")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def render_probe_xml(*, name: str, domain_type: str, boot_image: str, serial_log: str) -> str:
    """A tiny transient guest that boots `boot_image` (a raw boot sector) and logs its serial
    port to `serial_log`; used to prove (and time) an accelerator."""
    root = etree.Element("domain", type=domain_type)
    _sub(root, "name", name)
    _sub(root, "memory", "16", unit="MiB")
    _sub(root, "vcpu", "1")
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm")
    _sub(os_el, "boot", dev="hd")
    devices = _sub(root, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="raw")
    _sub(disk, "source", file=boot_image)
    _sub(disk, "target", dev="hda", bus="ide")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=serial_log)
    _sub(serial, "target", port="0")
    return etree.tostring(root, encoding="unicode")


def _parse(xml: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.fromstring(xml.encode(), parser)


def parse_disks(xml: str) -> list[DiskInfo]:
    """Disks and CD-ROMs of a domain XML, in document order."""
    disks: list[DiskInfo] = []
    for disk in _parse(xml).iterfind("devices/disk"):
        device = disk.get("device", "disk")
        if device not in ("disk", "cdrom"):
            continue
        target = disk.find("target")
        source = disk.find("source")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("volume")
        disks.append(
            DiskInfo(
                target=target.get("dev", "") if target is not None else "",
                device="disk" if device == "disk" else "cdrom",
                path=path,
            )
        )
    return disks


def parse_boot_files(xml: str) -> list[str]:
    """Kernel and initrd paths of a domain XML (never deleted with the domain)."""
    root = _parse(xml)
    return [el.text for el in root.iterfind("os/*") if el.tag in ("kernel", "initrd") and el.text]
