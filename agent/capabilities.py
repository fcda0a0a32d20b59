"""What a host can run (virtualisation modes, guest types, devices) and what it offers new
guests (storage pools, networks, bridges).

Parsing is pure lxml over libvirt's capabilities and domain capabilities XML, so it is tested
against real documents from Xen, QEMU/KVM and the test driver. The `read_*` functions are the
blocking libvirt calls around it; callers run them off the event loop.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterable

import libvirt
from lxml import etree

from agent.errors import is_connection_lost
from agent.hostfacts import hypervisor_for
from agent.netxml import network_info
from agent.pools import read_pool, supported_pool_types
from agent.protocol import (
    Accel,
    GuestArch,
    HostCapabilities,
    HostResources,
    Hypervisor,
    ModeSupport,
    NetworkInfo,
    PoolInfo,
)

log = logging.getLogger(__name__)

SYS_CLASS_NET = "/sys/class/net"

# What the creation wizard tells an operator, in the plain words virt-manager would use.
NOTE_TCG = "software emulation (QEMU TCG): works, but slowly"
NOTE_NO_HVM_GUEST = (
    "libvirt offers no full-virtualisation (hvm) guest on this host: is a QEMU system emulator installed?"
)
NOTE_XEN_NO_HVM = "this Xen host's CPU has no VT-x/AMD-V (or it is disabled in the BIOS)"
NOTE_PV_NEEDS_XEN = "paravirtualisation (PV) needs a Xen host"
NOTE_XEN_NO_PV = "this Xen hypervisor offers no PV guests (it may be built without PV support)"
NOTE_PVH_NEEDS_XEN = "PVH needs a Xen host"
NOTE_XEN_NO_PVH = (
    "this Xen/libvirt version does not offer PVH (it needs Xen 4.10+ and libvirt built with PVH support)"
)
# libvirt derives PVH guests from Xen's HVM guest types, so no VT-x/AMD-V means no PVH either.
NOTE_XEN_NO_PVH_NO_HVM = "PVH needs VT-x/AMD-V, which this Xen host's CPU lacks (or has disabled in the BIOS)"

_X86_ARCHES = frozenset({"i686", "x86_64"})
# Loader images that are UEFI (OVMF/AAVMF/edk2 builds) rather than a BIOS such as Xen's hvmloader.
_EFI_LOADER = re.compile(r"ovmf|aavmf|edk2|efi", re.IGNORECASE)
_VIRTTYPE: dict[Hypervisor, str] = {"kvm": "kvm", "qemu": "qemu", "xen": "xen", "test": "test"}


def _parse(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _unique(values: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _enum_values(parent: etree._Element | None, name: str) -> list[str]:
    if parent is None or parent.get("supported") == "no":
        return []
    return _unique(v.text for v in parent.iterfind(f"enum[@name='{name}']/value"))


def _parse_guest(guest: etree._Element) -> GuestArch | None:
    os_type = guest.findtext("os_type")
    arch = guest.find("arch")
    if not os_type or arch is None or not arch.get("name"):
        return None
    machines: list[str | None] = []
    # Machines sit under <arch> and under each <domain>; an alias names its canonical type.
    for machine in arch.iter("machine"):
        machines += [machine.text, machine.get("canonical")]
    emulator = arch.findtext("emulator") or arch.findtext("domain/emulator")
    return GuestArch(
        os_type=os_type.strip(),
        arch=str(arch.get("name")),
        domain_types=_unique(d.get("type") for d in arch.iterfind("domain")),
        machines=_unique(m.strip() if m else None for m in machines),
        emulator=emulator.strip() if emulator else None,
    )


def _hvm_mode(hypervisor: Hypervisor, os_types: set[str]) -> ModeSupport:
    if hypervisor == "test":
        return ModeSupport(mode="hvm", available=True, accel="hardware")
    if "hvm" not in os_types:
        # Xen lists HVM guests only when the CPU has (enabled) VT-x/AMD-V.
        note = NOTE_XEN_NO_HVM if hypervisor == "xen" else NOTE_NO_HVM_GUEST
        return ModeSupport(mode="hvm", available=False, note=note)
    if hypervisor == "qemu":
        return ModeSupport(mode="hvm", available=True, accel="software", note=NOTE_TCG)
    return ModeSupport(mode="hvm", available=True, accel="hardware")


def _pv_mode(hypervisor: Hypervisor, os_types: set[str]) -> ModeSupport:
    if hypervisor == "xen":
        if "xen" in os_types:
            return ModeSupport(mode="pv", available=True, accel="paravirt")
        return ModeSupport(mode="pv", available=False, note=NOTE_XEN_NO_PV)
    return ModeSupport(mode="pv", available=False, note=NOTE_PV_NEEDS_XEN)


def _pvh_mode(hypervisor: Hypervisor, os_types: set[str]) -> ModeSupport:
    if hypervisor == "xen":
        if "xenpvh" in os_types:
            return ModeSupport(mode="pvh", available=True, accel="paravirt")
        note = NOTE_XEN_NO_PVH if "hvm" in os_types else NOTE_XEN_NO_PVH_NO_HVM
        return ModeSupport(mode="pvh", available=False, note=note)
    return ModeSupport(mode="pvh", available=False, note=NOTE_PVH_NEEDS_XEN)


def _firmware(root: etree._Element, host_arch: str) -> list[str]:
    os_el = root.find("os")
    if os_el is None or os_el.get("supported") == "no":
        return []
    declared = _enum_values(os_el, "firmware")
    loader = os_el.find("loader")
    # Xen PV guests report loader supported='no': they boot a kernel, not any firmware.
    loader_supported = loader is None or loader.get("supported") != "no"
    loader_images = [v.text or "" for v in loader.iterfind("value")] if loader is not None else []
    arch = root.findtext("arch") or host_arch
    bios = "bios" in declared or (arch in _X86_ARCHES and loader_supported)
    efi = "efi" in declared or any(_EFI_LOADER.search(image) for image in loader_images)
    return [name for name, present in (("bios", bios), ("efi", efi)) if present]


def parse_host_capabilities(
    caps_xml: str, *, driver: str, accel: Accel, domcaps_xml: str | None = None
) -> HostCapabilities:
    """Turn libvirt's capabilities (and, if given, domain capabilities) into HostCapabilities.

    `driver` is libvirt's `conn.getType()` ("QEMU", "Xen", "Test"); `accel` is the agent's
    decision (for QEMU, "kvm" only when KVM really works). Sparse documents (the test driver's)
    give None or empty fields, never an error."""
    root = _parse(caps_xml)
    hypervisor = hypervisor_for(driver, accel)
    cpu = root.find("host/cpu")
    topology = cpu.find("topology") if cpu is not None else None
    guests = [g for g in (_parse_guest(el) for el in root.iterfind("guest")) if g is not None]
    os_types = {g.os_type for g in guests}
    arch = (cpu.findtext("arch") if cpu is not None else None) or "unknown"

    max_vcpus: int | None = None
    disk_buses: list[str] = []
    graphics: list[str] = []
    firmware: list[str] = []
    if domcaps_xml is not None:
        domcaps = _parse(domcaps_xml)
        vcpu = domcaps.find("vcpu")
        max_vcpus = _int(vcpu.get("max")) if vcpu is not None else None
        disk_buses = _enum_values(domcaps.find("devices/disk"), "bus")
        graphics = _enum_values(domcaps.find("devices/graphics"), "type")
        firmware = _firmware(domcaps, arch)

    return HostCapabilities(
        hypervisor=hypervisor,
        arch=arch.strip(),
        cpu_model=cpu.findtext("model") if cpu is not None else None,
        cpu_vendor=cpu.findtext("vendor") if cpu is not None else None,
        sockets=_int(topology.get("sockets")) if topology is not None else None,
        cores=_int(topology.get("cores")) if topology is not None else None,
        threads=_int(topology.get("threads")) if topology is not None else None,
        modes=[
            _hvm_mode(hypervisor, os_types),
            _pv_mode(hypervisor, os_types),
            _pvh_mode(hypervisor, os_types),
        ],
        guests=guests,
        max_vcpus=max_vcpus,
        disk_buses=disk_buses,
        graphics=graphics,
        firmware=firmware,
    )


def _read_domain_capabilities(
    conn: libvirt.virConnect, caps_xml: str, *, driver: str, accel: Accel
) -> str | None:
    root = _parse(caps_xml)
    arch = root.findtext("host/cpu/arch")
    hypervisor = hypervisor_for(driver, accel)
    machine = None
    if hypervisor == "xen" and root.find(f"guest[os_type='hvm']/arch[@name='{arch}']") is not None:
        # libxl answers for a PV machine by default; HVM is where firmware and graphics matter,
        # and its vCPU limit (128) is the lower, safe one to offer.
        machine = "xenfv"
    try:
        return str(conn.getDomainCapabilities(None, arch, machine, _VIRTTYPE[hypervisor], 0))
    except libvirt.libvirtError as err:
        if is_connection_lost(err):
            raise
        # The test driver has none; a QEMU host may lack the emulator for this virttype.
        log.info("no domain capabilities for %s/%s: %s", arch, _VIRTTYPE[hypervisor], err)
        return None


def read_host_capabilities(
    conn: libvirt.virConnect, *, accel: Accel, caps_xml: str | None = None
) -> HostCapabilities:
    """Blocking: capabilities can take seconds (libvirt probes QEMU binaries), so a caller that
    has just read them passes `caps_xml` instead of having them read again."""
    driver = str(conn.getType())
    if caps_xml is None:
        caps_xml = str(conn.getCapabilities())
    domcaps_xml = _read_domain_capabilities(conn, caps_xml, driver=driver, accel=accel)
    return parse_host_capabilities(caps_xml, driver=driver, accel=accel, domcaps_xml=domcaps_xml)


def _skip_vanished(err: libvirt.libvirtError, what: str) -> None:
    """An object that disappears between list and query is skipped; a lost connection is not."""
    if is_connection_lost(err):
        raise err
    log.warning("skipping %s: %s", what, err.get_error_message() or err)


def _read_pools(conn: libvirt.virConnect, *, refresh: bool) -> list[PoolInfo]:
    pools = []
    for pool in conn.listAllStoragePools(0):
        try:
            pools.append(read_pool(pool, refresh=refresh))
        except libvirt.libvirtError as err:
            _skip_vanished(err, "storage pool")
    return sorted(pools, key=lambda p: p.name)


def _read_networks(conn: libvirt.virConnect) -> list[NetworkInfo]:
    networks = []
    for network in conn.listAllNetworks(0):
        try:
            persistent = bool(network.isPersistent())
            info = network_info(
                network.XMLDesc(0),
                active=bool(network.isActive()),
                autostart=persistent and bool(network.autostart()),
                persistent=persistent,
            )
        except libvirt.libvirtError as err:
            _skip_vanished(err, "network")
            continue
        networks.append(info if info.name else info.model_copy(update={"name": str(network.name())}))
    return sorted(networks, key=lambda n: n.name)


def sysfs_bridges(net_dir: str = SYS_CLASS_NET) -> list[str]:
    """Bridges known to the local kernel: /sys/class/net/<name>/bridge exists only for them."""
    try:
        names = os.listdir(net_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.isdir(os.path.join(net_dir, n, "bridge")))


def parse_bridge_addresses(ip_json: str, bridges: Iterable[str]) -> dict[str, list[str]]:
    """The addresses (with prefixes) of these bridges in `ip -j addr show`'s answer, without
    link-local ones: bridge -> ["192.168.1.5/24", "2001:db8::5/64"]. A bridge without any is
    listed with none; one the answer does not have is left out."""
    wanted = set(bridges)
    try:
        links = json.loads(ip_json)
    except ValueError:
        return {}
    found: dict[str, list[str]] = {}
    for link in links if isinstance(links, list) else []:
        name = link.get("ifname") if isinstance(link, dict) else None
        if name not in wanted:
            continue
        addresses = found.setdefault(name, [])
        for info in link.get("addr_info") or []:
            if info.get("family") not in ("inet", "inet6") or info.get("scope") == "link":
                continue
            try:
                iface = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
            except (KeyError, ValueError):
                continue
            addresses.append(str(iface))
    return found


def bridge_addresses(bridges: list[str]) -> dict[str, list[str]]:
    """Blocking: this machine's own addresses on `bridges` (iproute2's `ip -j addr show type
    bridge`); {} when there are none to ask for or `ip` cannot say."""
    if not bridges:
        return {}
    try:
        answer = subprocess.run(
            ["ip", "-j", "addr", "show", "type", "bridge"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as err:
        log.info("cannot read the host bridges' addresses: %s", err)
        return {}
    return parse_bridge_addresses(answer.stdout, bridges)


def _libvirt_bridges(conn: libvirt.virConnect) -> list[str]:
    try:
        interfaces = conn.listAllInterfaces(0)
    except libvirt.libvirtError as err:
        if is_connection_lost(err):
            raise
        # No interface backend (libvirt built without netcf/udev): no bridges to offer.
        log.info("cannot list host interfaces: %s", err.get_error_message() or err)
        return []
    bridges = []
    for iface in interfaces:
        try:
            root = _parse(iface.XMLDesc(0))
        except libvirt.libvirtError as err:
            _skip_vanished(err, "interface")
            continue
        if root.get("type") == "bridge":
            bridges.append(root.get("name") or str(iface.name()))
    return sorted(set(bridges))


def read_host_resources(
    conn: libvirt.virConnect, *, local: bool, refresh_pools: bool = True
) -> HostResources:
    """Blocking: storage pools (and the types this host can define), libvirt networks and host
    bridges a guest NIC can join (with the host's own addresses on them, when local).

    `local` means libvirt runs on this machine, so sysfs is the truth about bridges; otherwise
    (and for the test driver, whose simulated host defines its own interfaces) libvirt's
    interface API is asked. `refresh_pools` rescans directory-like pools first (files copied in
    by hand); a read that answers a pool event does not, or its own refreshes would be events."""
    pools = _read_pools(conn, refresh=refresh_pools)
    networks = _read_networks(conn)
    use_sysfs = local and str(conn.getType()).lower() != "test"
    candidates = sysfs_bridges() if use_sysfs else _libvirt_bridges(conn)
    # A NAT/route/isolated network owns its bridge (virbr0); a bridge-mode network only
    # points at a host bridge, which stays joinable directly.
    owned = {n.bridge for n in networks if n.bridge and n.forward != "bridge"}
    bridges = [b for b in candidates if b not in owned]
    return HostResources(
        pools=pools,
        pool_types=supported_pool_types(conn),
        networks=networks,
        bridges=bridges,
        # The host's own addresses there are known only where its kernel is this machine's.
        bridge_addresses=bridge_addresses(bridges) if use_sysfs else {},
    )
