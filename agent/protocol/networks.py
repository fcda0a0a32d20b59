"""The protocol's network part: libvirt virtual networks a host has and Domus defines, and a
domain's network cards as the agent reports them.

Re-exported by agent.protocol: import these from there.
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuid_mod
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent.protocol.base import _Strict

NETWORK_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
# A Linux interface name: at most 15 characters, none of '/', ':' or white space.
IFACE_NAME = r"^[A-Za-z0-9_.-]{1,15}$"
MAC_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
DHCP_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

# The modes Domus defines, in the order the page offers them:
# - nat: guests reach out through the host's address (masquerade); a bridge of libvirt's own
# - route: guests' subnet routed by the host (no masquerade); the other side needs a route back
# - open: like route, but libvirt adds no firewall rules at all
# - isolated: guests reach each other and the host only
# - bridge: guests join an existing host bridge (no addresses, no DHCP from libvirt)
NetworkMode = Literal["nat", "route", "open", "isolated", "bridge"]
NETWORK_MODES: tuple[str, ...] = ("nat", "route", "open", "isolated", "bridge")
# Modes that take addresses (and DHCP) on the bridge libvirt makes; bridge mode takes neither.
NETWORK_ADDRESSED: tuple[str, ...] = ("nat", "route", "open", "isolated")
# Modes that cannot work without an IPv4 address on the network's bridge (the forward needs one).
NETWORK_NEEDS_IPV4: tuple[str, ...] = ("nat", "route")
MAX_DHCP_HOSTS = 1024


def _mac(value: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    if not MAC_PATTERN.match(mac):
        raise ValueError("must be six hex pairs such as 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise ValueError("must be a unicast address (the first byte must be even)")
    return mac


class DhcpHost(_Strict):
    """A static DHCP entry: the guest with this MAC always gets `ip` (and, optionally, `name`)."""

    mac: str
    ip: str
    name: str | None = None

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        return _mac(value)

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return str(ipaddress.IPv4Address(value.strip()))
        except ValueError as exc:
            raise ValueError("must be an IPv4 address such as 192.168.150.20") from exc

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not DHCP_HOST_NAME.match(value):
            raise ValueError("must be a host name: letters, digits and '-', at most 63 characters")
        return value


def _problem(field: str, kind: str, message: str, value: object) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=(field,), input=value)


def _interface(value: str, version: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """The host's address on the network with its prefix: 192.168.150.1/24, fd00:1::1/64."""
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError as exc:
        example = "192.168.150.1/24" if version == 4 else "fd00:150::1/64"
        raise ValueError(f"must be the host's address with its prefix, such as {example}") from exc
    if iface.version != version or "/" not in value:
        example = "192.168.150.1/24" if version == 4 else "fd00:150::1/64"
        raise ValueError(f"must be an IPv{version} address with its prefix, such as {example}")
    if iface.ip == iface.network.network_address or (
        version == 4 and iface.ip == iface.network.broadcast_address and iface.network.prefixlen < 31
    ):
        raise ValueError("must be a host's address in the subnet, not the subnet's own or broadcast address")
    return iface


class DhcpSettings(_Strict):
    """The DHCP part of a network: its range (both ends or neither) and its static hosts.
    Sent alone to change a network's DHCP (PUT /v1/networks/{name}/dhcp), live when it runs."""

    dhcp_start: str | None = None
    dhcp_end: str | None = None
    hosts: Annotated[list[DhcpHost], Field(max_length=MAX_DHCP_HOSTS)] = []

    @field_validator("dhcp_start", "dhcp_end")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            return str(ipaddress.IPv4Address(value.strip()))
        except ValueError as exc:
            raise ValueError("must be an IPv4 address such as 192.168.150.100") from exc

    def dhcp_problems(self, ipv4: str | None) -> list[InitErrorDetails]:
        """What is wrong with the range and hosts on a network whose host address is `ipv4`."""
        problems: list[InitErrorDetails] = []
        start, end = self.dhcp_start, self.dhcp_end
        if (start is None) != (end is None):
            missing = "dhcp_end" if end is None else "dhcp_start"
            problems.append(_problem(missing, "dhcp_range", "a DHCP range needs both ends", None))
            return problems
        if ipv4 is None:
            if start is not None:
                problems.append(
                    _problem("dhcp_start", "dhcp_unused", "DHCP needs an IPv4 address on the network", start)
                )
            if self.hosts:
                problems.append(
                    _problem("hosts", "dhcp_unused", "static hosts need an IPv4 address on the network", None)
                )
            return problems
        iface = ipaddress.IPv4Interface(ipv4)
        subnet = iface.network
        if start is not None and end is not None:
            first, last = ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)
            for field, addr in (("dhcp_start", first), ("dhcp_end", last)):
                if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
                    message = f"must be a host address in {subnet}"
                    problems.append(_problem(field, "dhcp_range", message, str(addr)))
            if first > last:
                problems.append(_problem("dhcp_end", "dhcp_range", "must not come before dhcp_start", end))
            elif first <= iface.ip <= last:
                message = f"the range must not hold the host's own {iface.ip}"
                problems.append(_problem("dhcp_start", "dhcp_range", message, start))
        elif self.hosts:
            problems.append(_problem("hosts", "dhcp_unused", "static hosts need a DHCP range", None))
        macs: set[str] = set()
        ips: set[str] = set()
        for index, host in enumerate(self.hosts):
            where = f"hosts.{index}"
            if ipaddress.IPv4Address(host.ip) not in subnet or host.ip == str(iface.ip):
                message = f"{host.ip} must be a guest's address in {subnet}"
                problems.append(_problem(where, "dhcp_host", message, host.ip))
            if host.mac in macs:
                problems.append(_problem(where, "dhcp_host", f"{host.mac} is listed twice", host.mac))
            if host.ip in ips:
                problems.append(_problem(where, "dhcp_host", f"{host.ip} is given to two guests", host.ip))
            macs.add(host.mac)
            ips.add(host.ip)
        return problems

    @model_validator(mode="after")
    def _range_complete(self) -> DhcpSettings:
        if type(self) is DhcpSettings and (self.dhcp_start is None) != (self.dhcp_end is None):
            missing = "dhcp_end" if self.dhcp_end is None else "dhcp_start"
            raise ValidationError.from_exception_data(
                "DhcpSettings", [_problem(missing, "dhcp_range", "a DHCP range needs both ends", None)]
            )
        return self


class NetworkSpec(DhcpSettings):
    """A virtual network to define. By mode (any field a mode does not use is refused by name):

    - nat, route: `ipv4` (the host's address on the network with its prefix) is required;
      `forward_dev` (the host interface to forward through) is optional
    - open, isolated: `ipv4` optional (none: guests get no DHCP and talk link-local)
    - bridge: `bridge` (an existing host bridge) is required; no addresses, no DHCP
    - every mode but bridge: `bridge` optional (the name of the bridge libvirt makes; none:
      libvirt picks virbrN), `ipv6` optional (the host's IPv6 address with its prefix), and the
      DHCP range and static hosts (IPv4) inside `ipv4`'s subnet.
    """

    name: Annotated[str, Field(pattern=NETWORK_NAME)]
    mode: NetworkMode = "nat"
    bridge: Annotated[str, Field(pattern=IFACE_NAME)] | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    forward_dev: Annotated[str, Field(pattern=IFACE_NAME)] | None = None
    start: bool = True
    autostart: bool = True

    @field_validator("ipv4")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        return None if value in (None, "") else str(_interface(value, 4))

    @field_validator("ipv6")
    @classmethod
    def _ipv6(cls, value: str | None) -> str | None:
        return None if value in (None, "") else str(_interface(value, 6))

    @model_validator(mode="after")
    def _fields_of_mode(self) -> NetworkSpec:
        problems: list[InitErrorDetails] = []
        mode = self.mode

        def refuse(field: str, code: str, message: str) -> None:
            problems.append(_problem(field, code, message, getattr(self, field)))

        if self.name in (".", ".."):
            refuse("name", "network_name", "must not be '.' or '..'")
        if mode == "bridge":
            if self.bridge is None:
                refuse("bridge", "network_field_missing", "required in bridge mode: the host bridge to join")
            for field in ("ipv4", "ipv6", "forward_dev", "dhcp_start", "dhcp_end", "hosts"):
                if getattr(self, field):
                    refuse(field, "network_field_unused", "not used in bridge mode: leave it out")
        else:
            if mode in NETWORK_NEEDS_IPV4 and self.ipv4 is None:
                message = f"required in {mode} mode: the host's address on it, such as 192.168.150.1/24"
                refuse("ipv4", "network_field_missing", message)
            if self.forward_dev is not None and mode not in ("nat", "route"):  # libvirt: not in open
                refuse("forward_dev", "network_field_unused", f"not used in {mode} mode: leave it out")
            if not (mode in NETWORK_NEEDS_IPV4 and self.ipv4 is None):  # else said above
                problems.extend(self.dhcp_problems(self.ipv4))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def dhcp(self) -> DhcpSettings:
        return DhcpSettings(dhcp_start=self.dhcp_start, dhcp_end=self.dhcp_end, hosts=self.hosts)


class NetworkAutostartRequest(_Strict):
    autostart: bool


class NetworkInfo(BaseModel):
    """A libvirt network as a host reports it."""

    name: str
    active: bool
    forward: str  # nat, route, open, bridge, isolated (no forward), or what virsh made: passthrough ...
    bridge: str | None = None
    autostart: bool = False
    persistent: bool = True
    ipv4: str | None = None  # the host's address with its prefix, 192.168.122.1/24
    ipv6: str | None = None
    dhcp_start: str | None = None
    dhcp_end: str | None = None
    hosts: list[DhcpHost] = []
    forward_dev: str | None = None


class NetworkResult(BaseModel):
    """A network after an action (None once deleted), and what was done."""

    network: NetworkInfo | None
    detail: str = ""


NicPending = Literal["attach", "detach", "change"]


class NicInfo(BaseModel):
    """A network card of a domain: of the running guest when it runs, with `pending` set where
    its definition for the next boot differs (attach: only there; detach: only in the running
    guest; change: another network, bridge, model, MAC or link state there)."""

    mac: str
    source: Literal["network", "bridge", "other"]
    name: str = ""  # the network's or the bridge's name ("" for other kinds: direct, user ...)
    model: str | None = None  # virtio, e1000 ...
    target: str | None = None  # the host side's interface (vnet0) while the guest runs
    link: Literal["up", "down"] = "up"
    pending: NicPending | None = None


class NicChangeRequest(_Strict):
    """What to change on a card (what is not given stays): its link state (live), the network
    or host bridge it is on (live where libvirt can, else from the next boot), or its MAC (only
    while the domain is shut off: a running guest's card keeps its address)."""

    link: Literal["up", "down"] | None = None
    source: Literal["network", "bridge"] | None = None
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] | None = None
    mac: str | None = None

    @field_validator("mac")
    @classmethod
    def _new_mac(cls, value: str | None) -> str | None:
        return None if value is None else _mac(value)

    @model_validator(mode="after")
    def _something(self) -> NicChangeRequest:
        if (self.source is None) != (self.name is None):
            missing = "name" if self.name is None else "source"
            raise ValidationError.from_exception_data(
                "NicChangeRequest",
                [
                    _problem(
                        missing, "nic_field_missing", "source and name go together: what the card joins", None
                    )
                ],
            )
        if self.link is None and self.source is None and self.mac is None:
            raise ValidationError.from_exception_data(
                "NicChangeRequest",
                [_problem("link", "nic_nothing", "say what to change: link, source and name, or mac", None)],
            )
        return self


AddressSource = Literal["agent", "lease", "arp"]
# When two sources give a card's addresses, the first here is shown: the guest's own word, then
# the network's DHCP server, then what the host's neighbour table saw.
ADDRESS_SOURCES: tuple[str, ...] = ("agent", "lease", "arp")


class NicAddress(BaseModel):
    """One address of a domain's network card, and who said so."""

    address: str  # 192.168.150.20, fd00:150::20
    prefix: int | None = None  # 24, 64; None when the source does not say (ARP)
    family: Literal["ipv4", "ipv6"]
    source: AddressSource


class NicAddresses(BaseModel):
    """A network card (by MAC) and its addresses now."""

    mac: str
    addresses: list[NicAddress] = []


class AddressesEvent(BaseModel):
    """A domain's addresses changed (a lease came, was renewed elsewhere or ended; the guest
    agent said; the neighbour table saw it): every card's addresses as known now. An empty
    `nics` says the domain has none any more (it stopped, or its leases ended)."""

    type: Literal["addresses"] = "addresses"
    uuid: uuid_mod.UUID
    nics: list[NicAddresses] = []
