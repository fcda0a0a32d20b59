"""Host facts: what the host is and can run, read from libvirt capabilities."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import libvirt
from lxml import etree

from agent import __version__
from agent.protocol import Accel, HostFacts, Hypervisor


@dataclass(frozen=True)
class Capabilities:
    arch: str
    hvm_hardware_assisted: bool
    guest_domain_types: frozenset[str]
    driver: str  # libvirt driver type: QEMU, Xen, Test ...
    xml: str  # the document itself, for agent.capabilities to describe without asking again


def parse_capabilities(xml: str) -> tuple[str, bool, frozenset[str]]:
    root = etree.fromstring(xml.encode())
    arch = root.findtext("host/cpu/arch") or "unknown"
    features = {f.get("name") for f in root.iterfind("host/cpu/feature")}
    types = {
        str(d.get("type"))
        for d in root.iterfind("guest/arch/domain")
        if d.get("type") and d.getparent() is not None
    }
    return arch, bool(features & {"vmx", "svm"}), frozenset(types)


def read_capabilities(conn: libvirt.virConnect) -> Capabilities:
    """Blocking: getCapabilities() can take seconds (libvirt probes QEMU binaries)."""
    xml = conn.getCapabilities()
    arch, hw, types = parse_capabilities(xml)
    return Capabilities(
        arch=arch, hvm_hardware_assisted=hw, guest_domain_types=types, driver=conn.getType(), xml=xml
    )


def hypervisor_for(driver: str, accel: Accel) -> Hypervisor:
    name = driver.lower()
    if name == "test":
        return "test"
    if name == "xen":
        return "xen"
    return "kvm" if accel == "kvm" else "qemu"


def domain_type_for(hypervisor: Hypervisor) -> str:
    """The <domain type=...> to render for a hypervisor."""
    return hypervisor


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def read_host_facts(
    conn: libvirt.virConnect,
    *,
    caps: Capabilities,
    uri: str,
    accel: Accel,
    kvm_usable: bool,
    pool_path: str | None,
) -> HostFacts:
    """Blocking: combine cached capabilities with live memory figures."""
    _model, memory_mib, cpus, *_rest = conn.getInfo()
    return HostFacts(
        hostname=socket.gethostname(),
        uri=uri,
        hypervisor=hypervisor_for(caps.driver, accel),
        accel=accel,
        arch=caps.arch,
        hvm_hardware_assisted=caps.hvm_hardware_assisted,
        kvm_usable=kvm_usable,
        cpus=int(cpus),
        memory_mib=int(memory_mib),
        free_memory_mib=int(conn.getFreeMemory() // (1024 * 1024)),
        libvirt_version=_version(conn.getLibVersion()),
        agent_version=__version__,
        default_pool_path=pool_path,
    )
