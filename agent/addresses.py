"""Every running guest's IP addresses, per network card, as the console shows them.

Three sources, merged per card (by MAC) in ADDRESS_SOURCES order: a card's addresses are those of
the best source that knows any for it, each address saying which source that was.

- agent: the QEMU guest agent (`interfaceAddresses(..._SRC_AGENT)`), asked only for running
  guests with an org.qemu.guest_agent.0 channel whose agent is connected (or whose driver does not
  say, as libvirt's test driver), when it connects and every AGENT_EVERY_S; loopback and
  link-local addresses are left out. An agent that does not answer is quiet and changes nothing.
- lease: the DHCP leases of each active libvirt network (`virNetwork.DHCPLeases()`), matched to
  the cards on that network. libvirt's lease helper rewrites `<bridge>.status` in its dnsmasq
  directory on every lease change, so the files are looked at every LEASE_CHECK_S (a stat each)
  and a network is read again only when its file changed, a lease of it expired, it started, or
  a guest with a card on it started. Without such files (test://, a remote layout) every
  network's leases are read every POLL_S.
- arp: the host's neighbour table (/proc/net/arp, IPv4), read every POLL_S, for cards the other
  sources know nothing of (guests on a host bridge): only when libvirt runs on this machine.

What changes is published as an AddressesEvent per domain (an empty one when a domain that had
addresses stops); a new subscriber gets every domain's addresses right after its inventory.
No libvirt call is made per domain on a timer, but for guests with a guest agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
import uuid as uuid_mod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import libvirt

from agent.connection import LibvirtConnection
from agent.errors import AgentProblem, is_connection_lost
from agent.events import STATS_EVERY_S, EventHub
from agent.netxml import domain_nics, network_info
from agent.netxml import parse as parse_xml
from agent.protocol import (
    ADDRESS_SOURCES,
    NETWORK_ADDRESSED,
    AddressesEvent,
    AddressSource,
    DomainEvent,
    NicAddress,
    NicAddresses,
    NicInfo,
)

log = logging.getLogger(__name__)

LEASE_DIR = "/var/lib/libvirt/dnsmasq"  # qemu:///system's dnsmasq state (libvirt 9: <bridge>.status)
ARP_PATH = "/proc/net/arp"
LEASE_CHECK_S = 2.0
POLL_S = STATS_EVERY_S
AGENT_EVERY_S = 30.0
AGENT_CONCURRENCY = 4  # guest agent questions at a time (one that does not answer holds a thread)
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

Family = Literal["ipv4", "ipv6"]
AgentState = Literal["connected", "disconnected", "unknown"]
# A domain event's state when the guest is gone (shut off, crashed, undefined or not found).
_GONE_STATES = (None, "shutoff", "crashed")
# Events after which a running domain's cards (or its guest agent channel) may be new.
_READ_AGAIN = ("started", "device-added", "device-removed")


class Address(NamedTuple):
    """One address as the watcher keeps it (cheap to compare); a NicAddress once published."""

    address: str
    prefix: int | None
    family: Family
    source: AddressSource


Addresses = tuple[Address, ...]
CardAddresses = tuple[tuple[str, Addresses], ...]  # (mac, addresses) of the cards that have any


def _sorted(addresses: Iterable[Address]) -> Addresses:
    """IPv4 first, then by address: the same set always compares (and shows) the same."""
    unique = set(addresses)
    return tuple(sorted(unique, key=lambda a: (a.family != "ipv4", ipaddress.ip_address(a.address))))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0
    except ValueError:
        return None


# -- the sources, as pure functions over what libvirt and the kernel say ---------------------------
def agent_addresses(answer: Mapping[str, Any]) -> dict[str, Addresses]:
    """MAC -> addresses of a guest agent's answer (`interfaceAddresses`), without loopback and
    link-local ones (nobody reaches a guest there) and without interfaces lacking a MAC."""
    found: dict[str, list[Address]] = {}
    for iface in answer.values():
        mac = str(iface.get("hwaddr") or "").lower()
        if not mac or mac == "00:00:00:00:00:00":
            continue
        for entry in iface.get("addrs") or []:
            ip = _ip(str(entry.get("addr", "")))
            if ip is None or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
                continue
            family: Family = "ipv4" if ip.version == 4 else "ipv6"
            prefix = entry.get("prefix")
            found.setdefault(mac, []).append(
                Address(str(ip), int(prefix) if prefix is not None else None, family, "agent")
            )
    return {mac: _sorted(addresses) for mac, addresses in found.items()}


def lease_addresses(leases: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Addresses], float | None]:
    """MAC -> addresses of a network's DHCP leases (`virNetwork.DHCPLeases()`), and when the first
    of them expires (epoch seconds; None when none does). Leases without a MAC (some DHCPv6
    clients) cannot be matched to a card and are left out."""
    found: dict[str, list[Address]] = {}
    expires: float | None = None
    for lease in leases:
        mac = str(lease.get("mac") or "").lower()
        ip = _ip(str(lease.get("ipaddr") or ""))
        if not mac or ip is None:
            continue
        family: Family = "ipv4" if ip.version == 4 else "ipv6"
        prefix = lease.get("prefix")
        found.setdefault(mac, []).append(
            Address(str(ip), int(prefix) if prefix is not None else None, family, "lease")
        )
        expiry = float(lease.get("expirytime") or 0)
        if expiry > 0 and (expires is None or expiry < expires):
            expires = expiry
    return {mac: _sorted(addresses) for mac, addresses in found.items()}, expires


def arp_addresses(text: str) -> dict[str, Addresses]:
    """MAC -> IPv4 addresses of the kernel's neighbour table (/proc/net/arp), without incomplete
    entries (flags 0x0: asked, never answered)."""
    found: dict[str, list[Address]] = {}
    for line in text.splitlines()[1:]:  # the first is the header
        fields = line.split()
        if len(fields) < 6:
            continue
        address, _hw_type, flags, mac = fields[:4]
        try:
            if int(flags, 16) == 0:
                continue
        except ValueError:
            continue
        mac = mac.lower()
        ip = _ip(address)
        if ip is None or ip.version != 4 or mac == "00:00:00:00:00:00":
            continue
        found.setdefault(mac, []).append(Address(str(ip), None, "ipv4", "arp"))
    return {mac: _sorted(addresses) for mac, addresses in found.items()}


def merge(macs: Iterable[str], by_source: Mapping[str, Mapping[str, Addresses]]) -> CardAddresses:
    """Each card's addresses from the best source that knows any for it (ADDRESS_SOURCES order);
    cards none knows of are left out, so that a domain without addresses has none."""
    merged: list[tuple[str, Addresses]] = []
    seen: set[str] = set()
    for mac in macs:
        if mac in seen:
            continue
        seen.add(mac)
        for source in ADDRESS_SOURCES:
            addresses = by_source.get(source, {}).get(mac)
            if addresses:
                merged.append((mac, addresses))
                break
    return tuple(merged)


def addresses_event(domain_uuid: str, cards: CardAddresses) -> AddressesEvent:
    return AddressesEvent(
        uuid=uuid_mod.UUID(domain_uuid),
        nics=[
            NicAddresses(
                mac=mac,
                addresses=[
                    NicAddress(address=a.address, prefix=a.prefix, family=a.family, source=a.source)
                    for a in addresses
                ],
            )
            for mac, addresses in cards
        ],
    )


# -- what is read from libvirt (blocking; run off the event loop) --------------------------------
@dataclass
class Guest:
    """A running domain as far as its addresses go."""

    nics: list[NicInfo]
    agent: AgentState | None  # its guest agent channel's state; None: it has none
    epoch: int = 0  # a new one for every reading, so that a late answer of an earlier run is dropped


@dataclass
class Network:
    """An active libvirt network that gives addresses (so its dnsmasq may have leases)."""

    bridge: str | None
    leases: dict[str, Addresses] = field(default_factory=dict)
    signature: tuple[int, int, int] | None = None  # its lease file's (inode, mtime, size) when read
    expires: float | None = None  # when its first lease expires
    read: bool = False


def guest_of(xml: str) -> Guest:
    root = parse_xml(xml)
    agent: AgentState | None = None
    for target in root.iterfind("devices/channel/target"):
        if target.get("name") == GUEST_AGENT_CHANNEL:
            state = target.get("state")
            # No state: the driver does not say (the test driver; a QEMU without VSERPORT_CHANGE,
            # whose agent libvirt then tries all the same), so it is asked.
            agent = "connected" if state == "connected" else "disconnected" if state else "unknown"
    return Guest(nics=domain_nics(root), agent=agent)


def _raise_if_lost(err: libvirt.libvirtError) -> None:
    """Another error of a domain or network read is its going (or stopping) meanwhile."""
    if is_connection_lost(err):
        raise err


def _read_guest(dom: libvirt.virDomain) -> Guest | None:
    """A domain's cards and guest agent, or None when it does not run (any more)."""
    try:
        if not dom.isActive():
            return None
        return guest_of(dom.XMLDesc(0))
    except libvirt.libvirtError as err:
        _raise_if_lost(err)
        return None


def read_running(conn: libvirt.virConnect) -> dict[str, Guest]:
    """Every running domain (uuid -> Guest): at start and after a reconnection only."""
    guests = {}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        guest = _read_guest(dom)
        if guest is not None:
            guests[dom.UUIDString()] = guest
    return guests


def read_guests(conn: libvirt.virConnect, uuids: Iterable[str]) -> dict[str, Guest | None]:
    """These domains (None for those that do not run)."""
    found: dict[str, Guest | None] = {}
    for key in uuids:
        try:
            dom = conn.lookupByUUIDString(key)
        except libvirt.libvirtError as err:
            _raise_if_lost(err)
            found[key] = None
            continue
        found[key] = _read_guest(dom)
    return found


def read_networks(conn: libvirt.virConnect) -> dict[str, str | None]:
    """Active networks with addresses of their own (a dnsmasq): name -> bridge."""
    found = {}
    for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE):
        try:
            info = network_info(net.XMLDesc(0), active=True, autostart=False, persistent=True)
        except libvirt.libvirtError as err:
            _raise_if_lost(err)
            continue
        if info.forward in NETWORK_ADDRESSED and (info.ipv4 or info.ipv6):
            found[info.name or str(net.name())] = info.bridge
    return found


class LeasesUnsupported(Exception):
    """The driver has no DHCPLeases (libvirt's test driver)."""


def read_leases(conn: libvirt.virConnect, names: Iterable[str]) -> dict[str, list[dict[str, Any]] | None]:
    """The leases of these networks (None for one that is gone or stopped)."""
    found: dict[str, list[dict[str, Any]] | None] = {}
    for name in names:
        try:
            found[name] = list(conn.networkLookupByName(name).DHCPLeases())
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                raise LeasesUnsupported(str(err.get_error_message() or err)) from err
            _raise_if_lost(err)
            found[name] = None
    return found


def ask_guest_agent(conn: libvirt.virConnect, key: str) -> dict[str, Addresses] | None:
    """What a guest's agent says of its cards; None when it does not answer (not running yet,
    busy, gone) or the guest is gone."""
    try:
        dom = conn.lookupByUUIDString(key)
        answer = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
    except libvirt.libvirtError as err:
        if is_connection_lost(err):
            raise
        log.debug("guest agent of %s: %s", key, err.get_error_message() or err)
        return None
    return agent_addresses(answer or {})


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


# -- the watcher ---------------------------------------------------------------------------------
class AddressWatcher:
    """Keeps every running domain's addresses and publishes their changes on the hub.

    Everything runs on the event loop (one loop task, plus a task per guest agent question);
    libvirt calls go through the connection's worker threads. The hub's domain, network and guest
    agent events only note what to look at and wake the loop."""

    def __init__(
        self,
        conn: LibvirtConnection,
        hub: EventHub,
        *,
        lease_dir: str | None = LEASE_DIR,
        arp_path: str | None = ARP_PATH,
        lease_check_s: float = LEASE_CHECK_S,
        poll_s: float = POLL_S,
        agent_every_s: float = AGENT_EVERY_S,
    ) -> None:
        self._conn = conn
        self._hub = hub
        self.lease_dir = lease_dir  # None: no lease files to watch, leases are read every poll_s
        self.arp_path = arp_path  # None: no neighbour table (libvirt is not on this machine)
        self.lease_check_s = lease_check_s
        self.poll_s = poll_s
        self.agent_every_s = agent_every_s
        self._guests: dict[str, Guest] = {}
        self._networks: dict[str, Network] = {}
        self._agent: dict[str, dict[str, Addresses]] = {}  # uuid -> mac -> addresses
        self._arp: dict[str, Addresses] = {}
        self._arp_text = ""  # the table as last read: the same text is not parsed again
        self._published: dict[str, CardAddresses] = {}  # what subscribers were last told, per uuid
        self._leases_supported = True
        self._networks_gone = False  # a network stopped: its guests lose its leases
        self._epoch = 0
        # What the loop is asked to do (by events), and when it next polls.
        self._rescan = True
        self._read: set[str] = set()
        self._gone: set[str] = set()
        self._networks_dirty = False
        self._leases_due: set[str] = set()
        self._agent_due: set[str] = set()
        self._next_poll = 0.0
        self._next_agent = 0.0
        self._asking: set[str] = set()  # guests whose agent is being asked
        self._agent_slots = asyncio.Semaphore(AGENT_CONCURRENCY)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._agent_tasks: set[asyncio.Task[None]] = set()

    # -- wiring ------------------------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._wake.set()  # the first reading now, not after a check's wait
        self._hub.add_listener(self.domain_event)
        self._hub.add_network_listener(self.network_event)
        self._hub.add_guest_agent_listener(self.guest_agent_event)
        self._hub.followers = self.snapshot
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._agent_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot(self) -> list[AddressesEvent]:
        """Every domain's addresses, for a subscriber that has just had the inventory."""
        return [addresses_event(key, cards) for key, cards in self._published.items() if cards]

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- events (on the event loop; they only note what to do) --------------------------------
    def reconnected(self) -> None:
        """A new libvirt connection: events may have been missed, so everything is read again."""
        self._rescan = True
        self._poke()

    def domain_event(self, event: DomainEvent) -> None:
        key = str(event.uuid)
        if event.state in _GONE_STATES:
            self._gone.add(key)
            self._read.discard(key)
        elif event.event in _READ_AGAIN or key not in self._guests:
            self._read.add(key)
            self._gone.discard(key)
        else:
            return
        self._poke()

    def network_event(self, _name: str, _happened: str) -> None:
        self._networks_dirty = True
        self._poke()

    def guest_agent_event(self, domain_uuid: uuid_mod.UUID, connected: bool) -> None:
        key = str(domain_uuid)
        guest = self._guests.get(key)
        if guest is None:  # (its start is being read: the reading says how its agent is)
            self._read.add(key)
            self._gone.discard(key)
        elif connected:
            guest.agent = "connected"
            self._agent_due.add(key)
        else:
            guest.agent = "disconnected"
            self._agent_due.discard(key)
            # What the agent said goes with it; the other sources speak for the guest again.
            if self._agent.pop(key, None):
                self._publish_changes([key])
        self._poke()

    # -- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.lease_check_s)
            self._wake.clear()
            try:
                await self._step()
            except (AgentProblem, libvirt.libvirtError) as err:
                # The connection is down or broke mid-way: what was asked stays asked, and a
                # reconnection reads everything again.
                log.warning("cannot read guests' addresses now: %s", err)
            except Exception:  # a defect must not end the addresses for the agent's life
                log.exception("reading guests' addresses failed")

    async def _step(self) -> None:
        now = time.monotonic()
        changed: set[str] = set()
        if self._rescan:
            self._rescan = False
            try:
                changed |= await self._read_everything()
            except BaseException:
                self._rescan = True
                raise
        changed |= self._forget_gone()
        changed |= await self._read_started()
        if self._networks_dirty:
            self._networks_dirty = False
            try:
                await self._read_network_list()
            except BaseException:
                self._networks_dirty = True
                raise
        polling = now >= self._next_poll
        if polling:
            self._next_poll = now + self.poll_s
        self._check_lease_files(polling=polling)
        changed |= await self._read_due_leases()
        if polling and self.arp_path is not None:
            changed |= await self._read_arp(self.arp_path)
        if now >= self._next_agent:
            self._next_agent = now + self.agent_every_s
            self._agent_due |= {k for k, g in self._guests.items() if g.agent in ("connected", "unknown")}
        self._ask_agents()
        self._publish_changes(changed)

    async def _read_everything(self) -> set[str]:
        guests = await self._conn.call(read_running, what="reading running domains' cards")
        previous = set(self._guests)
        for key in previous - set(guests):
            self._guests.pop(key, None)
            self._agent.pop(key, None)
        for key, guest in guests.items():
            self._adopt(key, guest)
        self._read.difference_update(guests)
        self._gone.difference_update(guests)
        await self._read_network_list()
        self._leases_due |= set(self._networks)
        self._next_agent = 0.0  # every guest agent is asked again
        return previous | set(guests) | set(self._published)

    def _adopt(self, key: str, guest: Guest) -> None:
        self._epoch += 1
        guest.epoch = self._epoch
        known = self._guests.get(key)
        if known is not None and known.agent == "connected" and guest.agent == "unknown":
            guest.agent = "connected"  # the event said so, after the reading began
        self._guests[key] = guest
        if guest.agent in ("connected", "unknown"):
            self._agent_due.add(key)
        else:
            self._agent.pop(key, None)

    def _forget_gone(self) -> set[str]:
        gone, self._gone = self._gone, set()
        for key in gone:
            self._guests.pop(key, None)
            self._agent.pop(key, None)
            self._agent_due.discard(key)
        return gone

    async def _read_started(self) -> set[str]:
        if not self._read:
            return set()
        wanted, self._read = self._read, set()
        try:
            found = await self._conn.call(lambda c: read_guests(c, wanted), what="reading domains' cards")
        except BaseException:
            self._read |= wanted
            raise
        bridges = {net.bridge: name for name, net in self._networks.items() if net.bridge}
        for key, guest in found.items():
            if guest is None:
                self._guests.pop(key, None)
                self._agent.pop(key, None)
                continue
            self._adopt(key, guest)
            # Its lease may be older than the news of its start: read its networks again.
            for nic in guest.nics:
                if nic.source == "network" and nic.name in self._networks:
                    self._leases_due.add(nic.name)
                elif nic.source == "bridge" and nic.name in bridges:
                    self._leases_due.add(bridges[nic.name])
        return set(found)

    async def _read_network_list(self) -> None:
        found = await self._conn.call(read_networks, what="reading networks")
        kept = {}
        for name, bridge in found.items():
            known = self._networks.get(name)
            if known is None or known.bridge != bridge:
                known = Network(bridge=bridge)
                self._leases_due.add(name)
            kept[name] = known
        dropped = set(self._networks) - set(kept)
        self._networks = kept
        self._leases_due -= dropped
        if dropped:  # its guests' lease addresses go with it, at the next publication
            self._networks_gone = True

    def _lease_file(self, net: Network) -> str | None:
        if self.lease_dir is None or not net.bridge:
            return None
        return os.path.join(self.lease_dir, f"{net.bridge}.status")

    def _check_lease_files(self, *, polling: bool) -> None:
        if not self._leases_supported:
            return
        watching = self.lease_dir is not None and os.path.isdir(self.lease_dir)
        wall = time.time()
        for name, net in self._networks.items():
            path = self._lease_file(net) if watching else None
            if path is None:
                if polling:  # nothing to watch: read it at every poll
                    self._leases_due.add(name)
            elif _signature(path) != net.signature or (net.expires is not None and wall >= net.expires):
                self._leases_due.add(name)

    async def _read_due_leases(self) -> set[str]:
        changed: set[str] = set()
        if self._networks_gone:
            self._networks_gone = False
            changed |= set(self._guests)
        if not self._leases_due or not self._leases_supported:
            self._leases_due.clear()
            return changed
        due, self._leases_due = self._leases_due & set(self._networks), set()
        # The file's state before the reading: a change while it is read is seen at the next check.
        files = {name: self._lease_file(self._networks[name]) for name in due}
        signatures = {name: _signature(path) for name, path in files.items() if path is not None}
        try:
            found = await self._conn.call(lambda c: read_leases(c, due), what="reading DHCP leases")
        except LeasesUnsupported as err:
            log.info("no DHCP leases from this libvirt (%s): addresses come from the other sources", err)
            self._leases_supported = False
            return changed
        except BaseException:
            self._leases_due |= due
            raise
        for name, leases in found.items():
            net = self._networks.get(name)
            if net is None:
                continue
            if leases is None:  # stopped meanwhile (its event follows)
                changed |= self._guests_on(name, net)
                self._networks.pop(name, None)
                continue
            by_mac, expires = lease_addresses(leases)
            net.signature = signatures.get(name)
            net.expires = expires
            if by_mac != net.leases or not net.read:
                net.leases, net.read = by_mac, True
                changed |= self._guests_on(name, net)
        return changed

    def _guests_on(self, name: str, net: Network) -> set[str]:
        return {
            key
            for key, guest in self._guests.items()
            if any(
                (n.source == "network" and n.name == name) or (n.source == "bridge" and n.name == net.bridge)
                for n in guest.nics
            )
        }

    async def _read_arp(self, path: str) -> set[str]:
        try:
            text = await asyncio.to_thread(_read_text, path)
        except OSError as err:
            log.debug("cannot read %s: %s", path, err)
            return set()
        if text == self._arp_text:
            return set()
        self._arp_text = text
        found = arp_addresses(text)
        if found == self._arp:
            return set()
        macs = {mac for mac in set(found) | set(self._arp) if found.get(mac) != self._arp.get(mac)}
        self._arp = found
        return {key for key, guest in self._guests.items() if any(n.mac in macs for n in guest.nics)}

    # -- guest agents ------------------------------------------------------------------------
    def _ask_agents(self) -> None:
        due, self._agent_due = self._agent_due - self._asking, self._agent_due & self._asking
        for key in due:
            guest = self._guests.get(key)
            if guest is None or guest.agent not in ("connected", "unknown"):
                continue
            self._asking.add(key)
            task = asyncio.get_running_loop().create_task(self._ask_agent(key, guest.epoch))
            self._agent_tasks.add(task)
            task.add_done_callback(self._agent_tasks.discard)

    async def _ask_agent(self, key: str, epoch: int) -> None:
        try:
            async with self._agent_slots:
                answer = await self._conn.call(lambda c: ask_guest_agent(c, key), what="asking a guest agent")
        except AgentProblem as err:
            log.debug("guest agent of %s: %s", key, err)
            return
        finally:
            self._asking.discard(key)
        guest = self._guests.get(key)
        if answer is None or guest is None or guest.epoch != epoch or guest.agent == "disconnected":
            return  # no answer (the other sources stand), or a guest that stopped meanwhile
        if answer != self._agent.get(key, {}):
            self._agent[key] = answer
            self._publish_changes([key])

    # -- merging and publishing --------------------------------------------------------------
    def _cards(self, key: str, bridges: Mapping[str, Network]) -> CardAddresses:
        guest = self._guests.get(key)
        if guest is None:
            return ()
        lease: dict[str, Addresses] = {}
        for nic in guest.nics:
            net = None
            if nic.source == "network":
                net = self._networks.get(nic.name)
            elif nic.source == "bridge":
                net = bridges.get(nic.name)
            if net is not None and nic.mac in net.leases:
                lease[nic.mac] = net.leases[nic.mac]
        by_source = {"agent": self._agent.get(key, {}), "lease": lease, "arp": self._arp}
        return merge((n.mac for n in guest.nics), by_source)

    def _publish_changes(self, keys: Iterable[str]) -> None:
        bridges = {net.bridge: net for net in self._networks.values() if net.bridge}
        for key in keys:
            cards = self._cards(key, bridges)
            if cards == self._published.get(key, ()):
                continue
            if cards:
                self._published[key] = cards
            else:
                self._published.pop(key, None)
            event = addresses_event(key, cards)
            said = "; ".join(
                f"{mac} {' '.join(a.address for a in found)} ({found[0].source})" for mac, found in cards
            )
            log.info("addresses of %s: %s", key, said or "none")
            self._hub.publish(event)


def _read_text(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as file:
        return file.read()
