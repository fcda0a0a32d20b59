"""Domain XML rendering (from a DomainSpec) and parsing (into DiskInfo), with lxml only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lxml import etree

from agent.protocol import BootloaderBoot, DiskInfo, DiskSpec, DomainSpec, NicSpec

DOMUS_NS = "https://domus.dev/xmlns/domain/1"
_DOMUS = f"{{{DOMUS_NS}}}"
PYGRUB = "/usr/lib/xen/bin/pygrub"
INSTALL_PENDING = f"{_DOMUS}install"  # metadata: the first start runs the installer
# VNC listens on the host's loopback only: browsers reach it through the agent.
VNC_LISTEN = "127.0.0.1"


@dataclass(frozen=True)
class ResolvedBoot:
    """Boot files after path checks: absolute, real paths inside a storage pool (or, for a
    network install, the installer's kernel and initrd fetched into the default pool)."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    iso: str | None = None
    cdrom_device: str | None = None  # the host's CD/DVD drive
    seed_iso: str | None = None  # the cloud-init NoCloud seed (label cidata)


@dataclass(frozen=True)
class ResolvedDisk:
    """A disk of the spec once its volume exists: where it is and how it is attached."""

    path: str
    format: str  # qcow2 or raw
    block: bool = False  # a block device (LVM logical volume), not a file


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrib=attrs)
    if text is not None:
        element.text = text
    return element


_BUS_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd", "xen": "xvd"}


def disk_target(index: int, prefix: str = "vd") -> str:
    """vda, vdb, ... vdz, vdaa (or sd.., hd.., xvd.. for other buses)."""
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return f"{prefix}{letters}"


def disk_bus(spec: DomainSpec, disk: DiskSpec, *, xen: bool) -> str:
    """The bus a disk is attached on: PV/PVH guests only have Xen's own; libxl has no virtio."""
    if spec.mode in ("pv", "pvh"):
        return "xen"
    bus = disk.bus or "virtio"  # the console fills in the OS's default
    if xen and bus in ("virtio", "scsi"):
        return "xen"
    return bus


def nic_model(spec: DomainSpec, nic: NicSpec, *, xen: bool) -> str | None:
    """The NIC model; None for PV/PVH, whose only card is Xen's netfront."""
    return nic_model_for(nic.model, paravirt=spec.mode in ("pv", "pvh"), xen=xen)


def nic_model_for(asked: str | None, *, paravirt: bool, xen: bool) -> str | None:
    """The model of a card asked as `asked` (None: virtio) on a domain of this kind: none on a
    PV/PVH guest, netfront for virtio under Xen, virtio for netfront under KVM/QEMU."""
    if paravirt:
        return None
    model = asked or "virtio"
    if xen and model == "virtio":
        return "netfront"
    if not xen and model == "netfront":
        return "virtio"
    return model


def nic_element(nic: NicSpec, model: str | None) -> etree._Element:
    """The <interface> of a card on a libvirt network or a host bridge (at define, and when one
    is attached later)."""
    iface = etree.Element("interface", type=nic.source)
    if nic.mac:
        _sub(iface, "mac", address=nic.mac)
    if nic.source == "network":
        _sub(iface, "source", network=nic.name)
    else:
        _sub(iface, "source", bridge=nic.name)
    if model is not None:
        _sub(iface, "model", type=model)
    return iface


def render_domain_xml(
    spec: DomainSpec,
    *,
    domain_type: str,
    boot: ResolvedBoot,
    disks: list[ResolvedDisk],
    arch: str = "x86_64",
) -> str:
    """Render the libvirt domain XML for `spec`.

    `domain_type` is kvm, qemu, xen or test; `disks` are the volumes, one per `spec.disks`
    entry, in order. This is the installed system's definition; an installing spec (ISO, CD-ROM,
    network install, PXE) is marked pending, and its first start uses `install_xml` (as
    virt-install does). Every user value reaches the document as an lxml text or attribute
    value, never as markup.
    """
    if len(disks) != len(spec.disks):
        raise ValueError("one volume per disk is required")
    xen = domain_type == "xen"
    root = etree.Element("domain", type=domain_type)
    _sub(root, "name", spec.name)
    _sub(root, "uuid", str(spec.uuid))
    metadata = _sub(root, "metadata")
    domus = etree.SubElement(metadata, f"{_DOMUS}domain", nsmap={"domus": DOMUS_NS})
    _sub(domus, f"{_DOMUS}spec", spec.model_dump_json())
    if spec.installs:
        _sub(domus, INSTALL_PENDING, "pending")
    memory_kib = str(spec.memory_mib * 1024)
    _sub(root, "memory", memory_kib, unit="KiB")
    _sub(root, "currentMemory", memory_kib, unit="KiB")
    _sub(root, "vcpu", str(spec.vcpus), placement="static")
    if isinstance(spec.boot, BootloaderBoot):
        _sub(root, "bootloader", PYGRUB)

    _render_os(root, spec, boot, xen=xen, arch=arch)
    if spec.mode == "hvm":
        features = _sub(root, "features")
        _sub(features, "acpi")
        _sub(features, "apic")
        if xen:
            _sub(features, "pae")
        if domain_type == "kvm":
            _sub(root, "cpu", mode="host-passthrough", check="none")
        elif domain_type == "qemu":
            # Emulation's default CPU (qemu64) lacks x86-64-v2, which RHEL 9 and others need:
            # offer everything TCG can emulate.
            _sub(root, "cpu", mode="maximum", check="none")
    _sub(root, "clock", offset=spec.clock)
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    _render_devices(root, spec, boot, disks, xen=xen, domain_type=domain_type)
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def _render_os(root: etree._Element, spec: DomainSpec, boot: ResolvedBoot, *, xen: bool, arch: str) -> None:
    os_el = _sub(root, "os")
    if spec.mode == "pv":
        _sub(os_el, "type", "xen", arch=arch, machine="xenpv")
    elif spec.mode == "pvh":
        _sub(os_el, "type", "xenpvh", arch=arch, machine="xenpvh")
    elif xen:
        _sub(os_el, "type", "hvm", arch=arch, machine="xenfv")
    else:
        _sub(os_el, "type", "hvm", arch=arch)
    kind = spec.boot.kind
    if kind == "kernel":
        _kernel_boot(os_el, boot)
        return
    if spec.mode != "hvm":  # PV with a bootloader: no firmware, no boot order
        return
    order = ["hd"] if spec.disks else []
    if kind in ("iso", "cdrom"):
        order.append("cdrom")  # still inserted: a live CD, or the installer's media
    elif kind == "pxe":
        order.append("network")  # diskless, or a disk with nothing to boot yet
    for dev in order or ["hd"]:
        _sub(os_el, "boot", dev=dev)


def _kernel_boot(os_el: etree._Element, boot: ResolvedBoot) -> None:
    """Direct kernel boot (a kernel in a pool, or a network install's fetched installer)."""
    if boot.kernel is None:
        raise ValueError("kernel boot needs a resolved kernel path")
    _sub(os_el, "kernel", boot.kernel)
    if boot.initrd is not None:
        _sub(os_el, "initrd", boot.initrd)
    if boot.cmdline:
        _sub(os_el, "cmdline", boot.cmdline)


def _render_devices(
    root: etree._Element,
    spec: DomainSpec,
    boot: ResolvedBoot,
    disks: list[ResolvedDisk],
    *,
    xen: bool,
    domain_type: str,
) -> None:
    devices = _sub(root, "devices")
    used: dict[str, int] = {}

    def target(bus: str) -> str:
        prefix = _BUS_PREFIX[bus]
        index = used.get(prefix, 0)
        used[prefix] = index + 1
        return disk_target(index, prefix)

    for disk, resolved in zip(spec.disks, disks, strict=True):
        bus = disk_bus(spec, disk, xen=xen)
        disk_el = _sub(devices, "disk", type="block" if resolved.block else "file", device="disk")
        _sub(disk_el, "driver", name="qemu", type=resolved.format)
        if resolved.block:
            _sub(disk_el, "source", dev=resolved.path)
        else:
            _sub(disk_el, "source", file=resolved.path)
        _sub(disk_el, "target", dev=target(bus), bus=bus)
    cdroms: list[tuple[str, str]] = []  # (type, path)
    if boot.iso is not None:
        cdroms.append(("file", boot.iso))
    if boot.cdrom_device is not None:
        cdroms.append(("block", boot.cdrom_device))
    if boot.seed_iso is not None:
        cdroms.append(("file", boot.seed_iso))
    for kind, path in cdroms:
        cdrom = _sub(devices, "disk", type=kind, device="cdrom")
        _sub(cdrom, "driver", name="qemu", type="raw")
        if kind == "block":
            _sub(cdrom, "source", dev=path)
        else:
            _sub(cdrom, "source", file=path)
        bus = "xen" if spec.mode != "hvm" else ("sata" if not xen and _uses_sata(spec) else "ide")
        _sub(cdrom, "target", dev=target(bus), bus=bus)
        _sub(cdrom, "readonly")
    for nic in spec.nics:
        devices.append(nic_element(nic, nic_model(spec, nic, xen=xen)))
    if spec.mode == "hvm" and spec.serial:
        serial = _sub(devices, "serial", type="pty")
        _sub(serial, "target", port="0")
        console = _sub(devices, "console", type="pty")
        _sub(console, "target", type="serial", port="0")
    elif spec.mode != "hvm":  # PV/PVH: the Xen console is the guest's hvc0
        console = _sub(devices, "console", type="pty")
        _sub(console, "target", type="xen", port="0")
    if spec.graphics:
        if spec.mode == "hvm" and not xen:
            _sub(devices, "input", type="tablet", bus="usb")
        graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen=VNC_LISTEN)
        _sub(graphics, "listen", type="address", address=VNC_LISTEN)
        if spec.mode == "hvm":
            video = _sub(devices, "video")
            _sub(video, "model", type="cirrus" if xen else "vga")


def _uses_sata(spec: DomainSpec) -> bool:
    return any(d.bus == "sata" for d in spec.disks)


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


def _parse(xml: str, *, for_edit: bool = False) -> etree._Element:
    # Dropping the indentation of a document about to be changed lets pretty_print redo it.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=for_edit)
    return etree.fromstring(xml.encode(), parser)


# The size of a disk's image, from its path and format (qcow2, raw ...), when it can be told.
Capacity = Callable[[str, str], int | None]


def parse_disks(xml: str, *, capacity: Capacity | None = None) -> list[DiskInfo]:
    """Disks and CD-ROMs of a domain XML, in document order (`capacity` sizes them)."""
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
        driver = disk.find("driver")
        fmt = (driver.get("type") if driver is not None else None) or "raw"
        disks.append(
            DiskInfo(
                target=target.get("dev", "") if target is not None else "",
                device="disk" if device == "disk" else "cdrom",
                path=path,
                bus=target.get("bus") if target is not None else None,
                readonly=disk.find("readonly") is not None or device == "cdrom",
                capacity_bytes=capacity(path, fmt) if capacity is not None and path else None,
            )
        )
    return disks


def parse_boot_files(xml: str) -> list[str]:
    """Kernel and initrd paths of a domain XML (never deleted with the domain)."""
    root = _parse(xml)
    return [el.text for el in root.iterfind("os/*") if el.tag in ("kernel", "initrd") and el.text]


def install_pending(xml: str) -> bool:
    return _parse(xml).find(f"metadata/{_DOMUS}domain/{INSTALL_PENDING}") is not None


def installed_xml(xml: str) -> str:
    """The domain's definition once its installer has been started: the pending mark removed."""
    root = _parse(xml, for_edit=True)
    for domus in root.iterfind(f"metadata/{_DOMUS}domain"):
        for mark in domus.findall(INSTALL_PENDING):
            domus.remove(mark)
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def install_xml(xml: str, spec: DomainSpec, boot: ResolvedBoot) -> str:
    """The first boot of an installing domain, derived from its current definition (so an edit
    made before the first start is kept): the installer boots first, and the guest's reboot at the
    end of the installation powers it off instead of booting the installer again."""
    root = _parse(installed_xml(xml), for_edit=True)
    os_el = root.find("os")
    if os_el is None:
        raise ValueError("domain XML without <os>")
    for el in list(os_el):
        if el.tag in ("boot", "kernel", "initrd", "cmdline"):
            os_el.remove(el)
    kind = spec.boot.kind
    if kind == "url":
        _kernel_boot(os_el, boot)
    elif kind in ("iso", "cdrom", "pxe"):
        _sub(os_el, "boot", dev="network" if kind == "pxe" else "cdrom")
        _sub(os_el, "boot", dev="hd")
    on_reboot = root.find("on_reboot")
    if on_reboot is None:
        on_reboot = _sub(root, "on_reboot")
    on_reboot.text = "destroy"
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def stored_spec(xml: str) -> DomainSpec | None:
    """The spec Domus defined this domain from (its metadata), if any."""
    text = _parse(xml).findtext(f"metadata/{_DOMUS}domain/{_DOMUS}spec")
    return DomainSpec.model_validate_json(text) if text else None
