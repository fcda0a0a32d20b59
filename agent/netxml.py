"""libvirt virtual networks as XML: built with lxml from a NetworkSpec, read back into a
NetworkInfo (networks made by virsh included), the changes that turn a network's DHCP into the
DHCP asked, and a domain's network cards as NicInfo.

Pure functions over XML; the libvirt calls around them are in agent/networks.py.
(https://libvirt.org/formatnetwork.html)
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Literal

from lxml import etree
from pydantic import ValidationError

from agent.protocol import DhcpHost, DhcpSettings, NetworkInfo, NetworkSpec, NicInfo

log = logging.getLogger(__name__)


# -- building ------------------------------------------------------------------------------------
def network_xml(spec: NetworkSpec) -> str:
    """libvirt's network XML for `spec`."""
    root = etree.Element("network")
    etree.SubElement(root, "name").text = spec.name
    if spec.mode == "bridge":
        # Guests join the host's own bridge: libvirt makes nothing, adds no address and no DHCP.
        etree.SubElement(root, "forward", mode="bridge")
        etree.SubElement(root, "bridge", name=spec.bridge or "")
        return _text(root)
    if spec.mode != "isolated":  # an isolated network is one without <forward>
        forward = etree.SubElement(root, "forward", mode=spec.mode)
        if spec.forward_dev is not None:
            forward.set("dev", spec.forward_dev)
    if spec.bridge is not None:
        etree.SubElement(root, "bridge", name=spec.bridge, stp="on", delay="0")
    if spec.ipv4 is not None:
        iface = ipaddress.IPv4Interface(spec.ipv4)
        ip = etree.SubElement(root, "ip", address=str(iface.ip), netmask=str(iface.netmask))
        if spec.dhcp_start is not None or spec.hosts:
            dhcp = etree.SubElement(ip, "dhcp")
            if spec.dhcp_start is not None and spec.dhcp_end is not None:
                dhcp.append(range_element(spec.dhcp_start, spec.dhcp_end))
            for host in spec.hosts:
                dhcp.append(host_element(host))
    if spec.ipv6 is not None:
        iface6 = ipaddress.IPv6Interface(spec.ipv6)
        etree.SubElement(
            root, "ip", family="ipv6", address=str(iface6.ip), prefix=str(iface6.network.prefixlen)
        )
    return _text(root)


def range_element(start: str, end: str) -> etree._Element:
    return etree.Element("range", start=start, end=end)


def host_element(host: DhcpHost) -> etree._Element:
    element = etree.Element("host", mac=host.mac, ip=host.ip)
    if host.name:
        element.set("name", host.name)
    return element


def _text(element: etree._Element) -> str:
    return etree.tostring(element, pretty_print=True, encoding="unicode")


# -- reading -------------------------------------------------------------------------------------
def parse(xml: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.fromstring(xml.encode(), parser)


def _classful_prefix(address: ipaddress.IPv4Address) -> int:
    """The prefix libvirt assumes for an IPv4 <ip> with neither netmask nor prefix."""
    first = int(str(address).split(".")[0])
    return 8 if first < 128 else 16 if first < 192 else 24


def _interface(ip: etree._Element) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    """The host's address on the network with its prefix, from `netmask` or `prefix`."""
    address = ip.get("address")
    if not address:
        return None
    try:
        if ip.get("family", "ipv4") == "ipv6" or ":" in address:
            return ipaddress.IPv6Interface(f"{address}/{ip.get('prefix') or 64}")
        mask = ip.get("netmask") or ip.get("prefix")
        if mask is None:
            mask = str(_classful_prefix(ipaddress.IPv4Address(address)))
        return ipaddress.IPv4Interface(f"{address}/{mask}")
    except ValueError:
        log.info("a network's <ip address=%r> is not one this agent understands", address)
        return None


def ipv4_element(root: etree._Element) -> tuple[int, etree._Element] | None:
    """The network's first IPv4 <ip> and its index among all its <ip> elements (libvirt's
    `parentIndex` for changes to its DHCP)."""
    for index, ip in enumerate(root.iterfind("ip")):
        if isinstance(_interface(ip), ipaddress.IPv4Interface):
            return index, ip
    return None


def _ipv6(root: etree._Element) -> str | None:
    for ip in root.iterfind("ip"):
        iface = _interface(ip)
        if isinstance(iface, ipaddress.IPv6Interface):
            return str(iface)
    return None


def reported_host(element: etree._Element) -> DhcpHost | None:
    """A static DHCP host as the console is told of it; None for one it cannot show (no MAC, a
    multicast MAC, an address that is no IPv4 one). A name it cannot take (a dotted one) is
    left out rather than the host."""
    mac, ip, name = element.get("mac"), element.get("ip"), element.get("name")
    if not mac or not ip:
        return None
    for candidate in (name, None):
        try:
            return DhcpHost(mac=mac, ip=ip, name=candidate)
        except ValidationError:
            continue
    return None


@dataclass(frozen=True)
class _Dhcp:
    ranges: list[tuple[etree._Element, tuple[str, str]]]  # every <range>, with its two ends
    hosts: list[tuple[etree._Element, DhcpHost | None]]  # every <host>, with what the console sees


def _dhcp(ip: etree._Element | None) -> _Dhcp:
    if ip is None:
        return _Dhcp(ranges=[], hosts=[])
    ranges = [(r, (r.get("start", ""), r.get("end", ""))) for r in ip.iterfind("dhcp/range")]
    hosts = [(h, reported_host(h)) for h in ip.iterfind("dhcp/host")]
    return _Dhcp(ranges=ranges, hosts=hosts)


def _forward(root: etree._Element) -> tuple[str, str | None]:
    forward = root.find("forward")
    if forward is None:
        return "isolated", None
    # <forward/> without a mode is NAT (libvirt's default); other modes keep their name.
    return forward.get("mode") or "nat", forward.get("dev")


def network_info(xml: str, *, active: bool, autostart: bool, persistent: bool) -> NetworkInfo:
    """A network as libvirt describes it (XMLDesc), for the console."""
    root = parse(xml)
    forward, forward_dev = _forward(root)
    bridge = root.find("bridge")
    found = ipv4_element(root)
    ipv4 = str(_interface(found[1])) if found is not None else None
    dhcp = _dhcp(found[1] if found is not None else None)
    start, end = dhcp.ranges[0][1] if dhcp.ranges else (None, None)
    return NetworkInfo(
        name=root.findtext("name") or "",
        active=active,
        forward=forward,
        bridge=(bridge.get("name") or None) if bridge is not None else None,
        autostart=autostart and persistent,
        persistent=persistent,
        ipv4=ipv4,
        ipv6=_ipv6(root),
        dhcp_start=start,
        dhcp_end=end,
        hosts=[host for _element, host in dhcp.hosts if host is not None],
        forward_dev=forward_dev,
    )


def network_differences(existing: NetworkInfo, spec: NetworkSpec) -> list[str]:
    """How an existing network differs from the one `spec` asks for; empty when it is the same
    (a bridge name is compared only when asked: libvirt picks one otherwise)."""
    wanted: dict[str, object] = {
        "mode": spec.mode,
        "ipv4": spec.ipv4,
        "ipv6": spec.ipv6,
        "forward_dev": spec.forward_dev,
        "dhcp_start": spec.dhcp_start,
        "dhcp_end": spec.dhcp_end,
        "hosts": spec.hosts,
    }
    have: dict[str, object] = {
        "mode": existing.forward,
        "ipv4": existing.ipv4,
        "ipv6": existing.ipv6,
        "forward_dev": existing.forward_dev,
        "dhcp_start": existing.dhcp_start,
        "dhcp_end": existing.dhcp_end,
        "hosts": existing.hosts,
    }
    if spec.bridge is not None:
        wanted["bridge"], have["bridge"] = spec.bridge, existing.bridge
    return [
        f"{key} {_show(have[key])}, not {_show(value)}" for key, value in wanted.items() if have[key] != value
    ]


def _show(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(f"{h.mac}={h.ip}" for h in value if isinstance(h, DhcpHost)) or "none"
    return "none" if value is None else str(value)


# -- changing DHCP -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DhcpChange:
    """One virNetworkUpdate: add or delete one <range> or <host> of the IPv4 <ip>'s DHCP."""

    command: Literal["add", "delete"]
    section: Literal["range", "host"]
    xml: str

    def inverse(self) -> DhcpChange:
        return DhcpChange("delete" if self.command == "add" else "add", self.section, self.xml)


@dataclass(frozen=True)
class DhcpPlan:
    parent_index: int  # the IPv4 <ip>'s index among the network's <ip> elements
    changes: list[DhcpChange]
    kept_hosts: int  # static hosts the console cannot show, left as they are


def dhcp_plan(xml: str, settings: DhcpSettings) -> DhcpPlan | None:
    """The changes that give the network of `xml` the range and static hosts of `settings`: the
    range becomes the one asked (or none); the hosts the console is shown become those asked,
    those it is not shown are kept. Deletions first (a host that moves to another address is
    deleted, then added), so libvirt never sees two hosts with one MAC or address. None when
    the network has no IPv4 address (and so no DHCP)."""
    found = ipv4_element(parse(xml))
    if found is None:
        return None
    index, ip = found
    dhcp = _dhcp(ip)
    wanted_range = (
        (settings.dhcp_start, settings.dhcp_end)
        if settings.dhcp_start is not None and settings.dhcp_end is not None
        else None
    )
    changes: list[DhcpChange] = []
    adds: list[DhcpChange] = []
    wanted_hosts = list(settings.hosts)
    for element, host in dhcp.hosts:
        if host is None:
            continue
        if host in wanted_hosts:
            wanted_hosts.remove(host)
        else:
            changes.append(DhcpChange("delete", "host", _flat(element)))
    for element, ends in dhcp.ranges:
        if ends != wanted_range:
            changes.append(DhcpChange("delete", "range", _flat(element)))
    if wanted_range is not None and wanted_range not in [ends for _element, ends in dhcp.ranges]:
        adds.append(DhcpChange("add", "range", _flat(range_element(*wanted_range))))
    adds.extend(DhcpChange("add", "host", _flat(host_element(host))) for host in wanted_hosts)
    kept = sum(1 for _element, host in dhcp.hosts if host is None)
    return DhcpPlan(parent_index=index, changes=changes + adds, kept_hosts=kept)


def _flat(element: etree._Element) -> str:
    """One element alone, as virNetworkUpdate takes it (its children, a lease, included)."""
    copy = etree.fromstring(etree.tostring(element))
    copy.tail = None
    return etree.tostring(copy, encoding="unicode")


def network_ipv4(xml: str) -> str | None:
    found = ipv4_element(parse(xml))
    return str(_interface(found[1])) if found is not None else None


# -- a domain's network cards --------------------------------------------------------------------
def nic_mac(iface: etree._Element) -> str:
    """An <interface>'s MAC, lowercase ("" when it has none)."""
    mac = iface.find("mac")
    return (mac.get("address", "") if mac is not None else "").lower()


def find_nic(root: etree._Element, mac: str) -> etree._Element | None:
    """The <interface> of a domain's XML with this MAC (any case), if any."""
    for iface in root.iterfind("devices/interface"):
        if nic_mac(iface) == mac.lower():
            return iface
    return None


def nic_info(iface: etree._Element) -> NicInfo:
    """One <interface> as the console is told of it."""
    kind = iface.get("type")
    source = iface.find("source")
    model = iface.find("model")
    target = iface.find("target")
    link = iface.find("link")
    where: Literal["network", "bridge", "other"] = "other"
    name = ""
    if kind == "network" and source is not None:
        where, name = "network", source.get("network", "")
    elif kind == "bridge" and source is not None:
        where, name = "bridge", source.get("bridge", "")
    return NicInfo(
        mac=nic_mac(iface),
        source=where,
        name=name,
        model=model.get("type") if model is not None else None,
        target=target.get("dev") if target is not None else None,
        link="down" if link is not None and link.get("state") == "down" else "up",
    )


def _same_card(a: NicInfo, b: NicInfo) -> bool:
    """Whether two readings of a card agree on what the guest sees of it (not the host side's
    interface name, which only a running guest has)."""
    return (a.mac, a.source, a.name, a.model, a.link) == (b.mac, b.source, b.name, b.model, b.link)


def _slot(iface: etree._Element) -> tuple[tuple[str, str], ...] | None:
    """Where the card sits on its bus (its <address>), which a MAC change leaves as it was."""
    address = iface.find("address")
    if address is None or not len(address.attrib):
        return None
    return tuple(sorted((str(key), str(value)) for key, value in address.attrib.items()))


def domain_nics(root: etree._Element, config: etree._Element | None = None) -> list[NicInfo]:
    """The network cards of a domain's XML (already parsed), in document order. With `config`
    (a running domain's definition for its next boot), each is marked with what that changes: a
    card only there is listed too (attach), one only in the running guest goes (detach), one on
    another network or bridge, with another model, link state or MAC there changes (change; what
    is shown stays the running guest's). A card is the same card by its MAC, or, for a MAC
    changed behind the agent's back, by its slot on the bus."""
    live = [(iface, nic_info(iface)) for iface in root.iterfind("devices/interface")]
    if config is None:
        return [nic for _iface, nic in live]
    planned = [(iface, nic_info(iface)) for iface in config.iterfind("devices/interface")]
    unmatched = list(range(len(planned)))
    nics: list[NicInfo] = []
    for iface, nic in live:
        index = next((i for i in unmatched if planned[i][1].mac == nic.mac), None)
        if index is None and (slot := _slot(iface)) is not None:
            index = next((i for i in unmatched if _slot(planned[i][0]) == slot), None)
        if index is None:
            nics.append(nic.model_copy(update={"pending": "detach"}))
            continue
        unmatched.remove(index)
        same = _same_card(nic, planned[index][1])
        nics.append(nic if same else nic.model_copy(update={"pending": "change"}))
    # (A card not in the running guest has no interface on the host side yet.)
    nics += [planned[i][1].model_copy(update={"pending": "attach", "target": None}) for i in unmatched]
    return nics


def nic_uses(root: etree._Element, network: str, bridge: str | None) -> bool:
    """Whether a domain's XML has a card on `network` (by name, or on its `bridge` directly)."""
    for nic in domain_nics(root):
        if nic.source == "network" and nic.name == network:
            return True
        if bridge and nic.source == "bridge" and nic.name == bridge:
            return True
    return False
