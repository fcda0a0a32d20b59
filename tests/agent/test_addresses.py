"""Guests' addresses (agent/addresses.py): what each source says (the kernel's neighbour table, a
network's DHCP leases, a guest agent's answer), the merge per card, and the watcher's events
against stand-ins for libvirt's objects (for what the test driver cannot do: DHCP leases, a
guest agent that connects and goes) and against the test driver itself.

Real leases on a real network: tests/agent/test_addresses_real.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import libvirt
import pytest
from pydantic import TypeAdapter

from agent.addresses import (
    Address,
    AddressWatcher,
    agent_addresses,
    arp_addresses,
    guest_of,
    lease_addresses,
    merge,
)
from agent.client import AgentClient
from agent.events import EventHub, Subscriber
from agent.protocol import (
    AddressesEvent,
    AgentEvent,
    DomainEvent,
    HeartbeatEvent,
    HostFacts,
    InventoryEvent,
    NicAddress,
    NicAddresses,
    StatsEvent,
)
from tests.agent.conftest import RunningAgent, launch_agent, stop_agent

T = TypeVar("T")
EVENT = TypeAdapter(AgentEvent)

# /proc/net/arp as the kernel writes it: complete (0x2), permanent (0x6), incomplete (0x0) entries.
ARP = """\
IP address       HW type     Flags       HW address            Mask     Device
192.168.160.130  0x1         0x2         52:54:00:16:00:01     *        vbx0
10.0.0.7         0x1         0x6         52:54:00:16:00:02     *        br0
10.0.0.8         0x1         0x0         00:00:00:00:00:00     *        br0
10.0.0.9         0x1         0x2         52:54:00:16:00:02     *        br0
10.0.0.10        0x1         0x0         52:54:00:16:00:03     *        br0
"""
# virNetwork.DHCPLeases() of libvirt 9 (the first as read on an isolated host), and a DHCPv6 lease
# without a MAC, which no card can be matched to.
LEASES: list[dict[str, Any]] = [
    {
        "iface": "vbx0",
        "expirytime": 1796686535,
        "type": 0,
        "mac": "52:54:00:16:00:01",
        "ipaddr": "192.168.160.130",
        "prefix": 24,
        "hostname": "domus-guest",
        "clientid": "01:52:54:00:16:00:01",
        "iaid": None,
    },
    {"iface": "vbx0", "expirytime": 1796680000, "type": 1, "mac": None, "ipaddr": "fd00::5", "prefix": 64},
    {
        "iface": "vbx0",
        "expirytime": 0,
        "type": 1,
        "mac": "52:54:00:16:00:01",
        "ipaddr": "fd00::9",
        "prefix": 64,
    },
]
# dom.interfaceAddresses(..._SRC_AGENT) of a guest with a bridge and a container network inside.
AGENT_ANSWER = {
    "lo": {
        "hwaddr": "00:00:00:00:00:00",
        "addrs": [{"type": 0, "addr": "127.0.0.1", "prefix": 8}, {"type": 1, "addr": "::1", "prefix": 128}],
    },
    "eth0": {
        "hwaddr": "52:54:00:16:00:01",
        "addrs": [
            {"type": 1, "addr": "fe80::5054:ff:fe16:1", "prefix": 64},
            {"type": 1, "addr": "2001:db8::5", "prefix": 64},
            {"type": 0, "addr": "192.168.160.130", "prefix": 24},
        ],
    },
    "eth0.100": {"hwaddr": "52:54:00:16:00:01", "addrs": [{"type": 0, "addr": "10.100.0.5", "prefix": 16}]},
    "eth1": {"hwaddr": "52:54:00:16:00:02", "addrs": [{"type": 0, "addr": "169.254.7.7", "prefix": 16}]},
}


def test_the_neighbour_table_without_incomplete_entries() -> None:
    assert arp_addresses(ARP) == {
        "52:54:00:16:00:01": (Address("192.168.160.130", None, "ipv4", "arp"),),
        "52:54:00:16:00:02": (
            Address("10.0.0.7", None, "ipv4", "arp"),
            Address("10.0.0.9", None, "ipv4", "arp"),
        ),
    }
    assert arp_addresses("") == {} and arp_addresses(ARP.splitlines()[0]) == {}


def test_leases_by_mac_and_the_first_expiry() -> None:
    by_mac, expires = lease_addresses(LEASES)
    assert by_mac == {
        "52:54:00:16:00:01": (
            Address("192.168.160.130", 24, "ipv4", "lease"),
            Address("fd00::9", 64, "ipv6", "lease"),
        )
    }
    # The first to expire of those shown (the MAC-less one's expiry changes nothing; 0 is never).
    assert expires == 1796686535
    assert lease_addresses([]) == ({}, None)


def test_a_guest_agent_s_answer_without_loopback_and_link_local() -> None:
    assert agent_addresses(AGENT_ANSWER) == {
        "52:54:00:16:00:01": (
            Address("10.100.0.5", 16, "ipv4", "agent"),
            Address("192.168.160.130", 24, "ipv4", "agent"),
            Address("2001:db8::5", 64, "ipv6", "agent"),
        )
    }


def test_each_card_from_the_best_source_that_knows_it() -> None:
    a, b, c, d = (f"52:54:00:00:00:0{i}" for i in range(1, 5))
    agent = {a: (Address("10.0.0.1", 24, "ipv4", "agent"),)}
    lease = {
        a: (Address("10.0.0.99", 24, "ipv4", "lease"),),
        b: (Address("10.0.0.2", 24, "ipv4", "lease"),),
    }
    arp = {
        a: (Address("10.0.0.98", None, "ipv4", "arp"),),
        b: (Address("10.0.0.97", None, "ipv4", "arp"),),
        c: (Address("10.0.0.3", None, "ipv4", "arp"),),
    }
    # The cards in the domain's order; d is known to none, and the agent's empty word is no word.
    merged = merge([c, b, a, d], {"agent": {**agent, b: ()}, "lease": lease, "arp": arp})
    assert merged == ((c, arp[c]), (b, lease[b]), (a, agent[a]))
    assert merge([d], {"agent": agent, "lease": lease, "arp": arp}) == ()


def test_the_guest_agent_channel_and_its_state() -> None:
    def domain(channel: str) -> str:
        return f"""<domain><devices>
          <interface type='network'><mac address='52:54:00:AA:00:01'/><source network='lab'/></interface>
          <interface type='bridge'><mac address='52:54:00:aa:00:02'/><source bridge='br0'/></interface>
          {channel}</devices></domain>"""

    qga = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'{}/></channel>"
    spice = "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>"
    guest = guest_of(domain(qga.format(" state='connected'")))
    assert guest.agent == "connected"
    assert [(n.mac, n.source, n.name) for n in guest.nics] == [
        ("52:54:00:aa:00:01", "network", "lab"),
        ("52:54:00:aa:00:02", "bridge", "br0"),
    ]
    assert guest_of(domain(qga.format(" state='disconnected'"))).agent == "disconnected"
    assert guest_of(domain(qga.format(""))).agent == "unknown"  # the driver does not say: asked
    assert guest_of(domain(spice)).agent is None


# -- the watcher, against stand-ins for libvirt ------------------------------------------------------
def _error(code: int, message: str = "failed") -> libvirt.libvirtError:
    libvirt.virResetLastError()
    err = libvirt.libvirtError(message)
    err.err = (code, 0, message, 2, "", None, None, 0, 0)
    return err


def _domain_xml(nics: list[tuple[str, str, str]], agent: str | None) -> str:
    cards = "".join(
        f"<interface type='{kind}'><mac address='{mac}'/><source {kind}='{name}'/></interface>"
        for mac, kind, name in nics
    )
    channel = (
        f"<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='{agent}'/></channel>"
        if agent
        else ""
    )
    return f"<domain type='kvm' id='1'><name>g</name><devices>{cards}{channel}</devices></domain>"


class FakeDomain:
    def __init__(self, nics: list[tuple[str, str, str]], *, agent: str | None = None) -> None:
        self.uuid = str(uuid.uuid4())
        self.nics = nics
        self.agent = agent
        self.active = True
        self.answer: dict[str, Any] | libvirt.libvirtError = {}
        self.asked = 0

    def UUIDString(self) -> str:
        return self.uuid

    def isActive(self) -> int:
        return int(self.active)

    def XMLDesc(self, flags: int = 0) -> str:
        if not self.active:
            raise _error(libvirt.VIR_ERR_NO_DOMAIN)
        return _domain_xml(self.nics, self.agent)

    def interfaceAddresses(self, source: int) -> dict[str, Any]:
        assert source == libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT
        self.asked += 1
        if isinstance(self.answer, libvirt.libvirtError):
            raise self.answer
        return self.answer


class FakeNetwork:
    def __init__(self, name: str, bridge: str) -> None:
        self.network_name = name
        self.bridge = bridge
        self.leases: list[dict[str, Any]] = []
        self.reads = 0

    def name(self) -> str:
        return self.network_name

    def XMLDesc(self, flags: int = 0) -> str:
        return (
            f"<network><name>{self.network_name}</name><forward mode='nat'/><bridge name='{self.bridge}'/>"
            "<ip address='192.168.160.1' prefix='24'><dhcp><range start='192.168.160.100' "
            "end='192.168.160.200'/></dhcp></ip></network>"
        )

    def DHCPLeases(self) -> list[dict[str, Any]]:
        self.reads += 1
        return list(self.leases)


class FakeLibvirt:
    """The connection's calls the watcher makes."""

    def __init__(self) -> None:
        self.domains: dict[str, FakeDomain] = {}
        self.networks: dict[str, FakeNetwork] = {}

    def add(self, dom: FakeDomain) -> FakeDomain:
        self.domains[dom.uuid] = dom
        return dom

    def listAllDomains(self, flags: int) -> list[FakeDomain]:
        assert flags == libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
        return [d for d in self.domains.values() if d.active]

    def lookupByUUIDString(self, key: str) -> FakeDomain:
        if key not in self.domains:
            raise _error(libvirt.VIR_ERR_NO_DOMAIN)
        return self.domains[key]

    def listAllNetworks(self, flags: int) -> list[FakeNetwork]:
        return list(self.networks.values())

    def networkLookupByName(self, name: str) -> FakeNetwork:
        if name not in self.networks:
            raise _error(libvirt.VIR_ERR_NO_NETWORK)
        return self.networks[name]


class FakeConnection:
    """Stands for LibvirtConnection: runs each call in a worker thread, as it does."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.calls: list[str] = []

    async def call(self, fn: Callable[[Any], T], *, what: str) -> T:
        self.calls.append(what)
        return await asyncio.to_thread(fn, self.conn)


async def next_addresses(sub: Subscriber, timeout: float = 5.0) -> AddressesEvent:
    message = await asyncio.wait_for(sub.queue.get(), timeout)
    assert message is not None
    return AddressesEvent.model_validate_json(message)


def seen(event: AddressesEvent) -> list[tuple[str, list[tuple[str, int | None, str]]]]:
    return [(n.mac, [(a.address, a.prefix, a.source) for a in n.addresses]) for n in event.nics]


def write_leases(path: Path, leases: list[dict[str, Any]]) -> None:
    """As libvirt's lease helper does: a new file put in place (a new inode)."""
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps(leases))
    os.replace(tmp, path)


LAB_MAC, LAN_MAC, OTHER_MAC = "52:54:00:16:00:01", "52:54:00:16:00:02", "52:54:00:16:00:09"


def lease(mac: str, ip: str, expiry: float = 0) -> dict[str, Any]:
    return {"mac": mac, "ipaddr": ip, "prefix": 24, "type": 0, "expirytime": expiry}


@pytest.fixture
def fake() -> FakeLibvirt:
    fake = FakeLibvirt()
    fake.networks["lab"] = FakeNetwork("lab", "vbx0")
    return fake


@pytest.fixture
def lease_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dnsmasq"
    path.mkdir()
    return path


@pytest.fixture
async def watched(
    fake: FakeLibvirt, lease_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[AddressWatcher, Subscriber]]:
    hub = EventHub()
    sub = hub.subscribe()
    (tmp_path / "arp").write_text(ARP.splitlines()[0] + "\n")
    watcher = AddressWatcher(
        FakeConnection(fake),  # type: ignore[arg-type]
        hub,
        lease_dir=str(lease_dir),
        arp_path=str(tmp_path / "arp"),
        lease_check_s=0.05,
        poll_s=0.2,
        agent_every_s=0.3,
    )
    watcher.start()
    try:
        yield watcher, sub
    finally:
        await watcher.stop()


async def quiet(sub: Subscriber, seconds: float) -> None:
    """Nothing published for `seconds`."""
    await asyncio.sleep(seconds)
    assert sub.queue.empty(), sub.queue.get_nowait()


async def until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_lease_is_published_when_its_file_changes_and_only_then(
    fake: FakeLibvirt, lease_dir: Path, watched: tuple[AddressWatcher, Subscriber]
) -> None:
    watcher, sub = watched
    net = fake.networks["lab"]
    dom = fake.add(FakeDomain([(LAB_MAC, "network", "lab")]))
    watcher.domain_event(DomainEvent(uuid=uuid.UUID(dom.uuid), name="g", event="started", state="running"))
    await until("the network's leases read", lambda: net.reads >= 1)
    await quiet(sub, 0.3)  # no lease yet: nothing to say

    net.leases = [lease(LAB_MAC, "192.168.160.130"), lease(OTHER_MAC, "192.168.160.131")]
    write_leases(lease_dir / "vbx0.status", net.leases)
    event = await next_addresses(sub)
    assert event.uuid == uuid.UUID(dom.uuid)
    assert seen(event) == [(LAB_MAC, [("192.168.160.130", 24, "lease")])]
    assert watcher.snapshot() == [event]

    # The file rewritten with the same leases (a renewal): read again, nothing published.
    reads = net.reads
    write_leases(lease_dir / "vbx0.status", net.leases)
    await until("the leases read again", lambda: net.reads > reads)
    await quiet(sub, 0.3)
    # Between changes the file is only looked at: no reading.
    reads = net.reads
    await asyncio.sleep(0.5)
    assert net.reads == reads

    net.leases = [lease(LAB_MAC, "192.168.160.140")]
    write_leases(lease_dir / "vbx0.status", net.leases)
    assert seen(await next_addresses(sub)) == [(LAB_MAC, [("192.168.160.140", 24, "lease")])]

    dom.active = False
    watcher.domain_event(DomainEvent(uuid=uuid.UUID(dom.uuid), name="g", event="stopped", state="shutoff"))
    stopped = await next_addresses(sub)
    assert (stopped.uuid, stopped.nics) == (uuid.UUID(dom.uuid), [])
    assert watcher.snapshot() == []
    await quiet(sub, 0.3)  # its lease stays in dnsmasq, but the guest does not run


async def test_a_lease_that_expires_is_read_again(
    fake: FakeLibvirt, lease_dir: Path, watched: tuple[AddressWatcher, Subscriber]
) -> None:
    watcher, sub = watched
    net = fake.networks["lab"]
    net.leases = [lease(LAB_MAC, "192.168.160.130", expiry=time.time() + 0.5)]
    write_leases(lease_dir / "vbx0.status", net.leases)
    dom = fake.add(FakeDomain([(LAB_MAC, "network", "lab")]))
    watcher.domain_event(DomainEvent(uuid=uuid.UUID(dom.uuid), name="g", event="started", state="running"))
    assert seen(await next_addresses(sub)) == [(LAB_MAC, [("192.168.160.130", 24, "lease")])]
    net.leases = []  # libvirt leaves out an expired lease; the file is not rewritten
    gone = await next_addresses(sub)
    assert gone.nics == []


async def test_the_guest_agent_comes_first_and_its_silence_changes_nothing(
    fake: FakeLibvirt, lease_dir: Path, watched: tuple[AddressWatcher, Subscriber]
) -> None:
    watcher, sub = watched
    net = fake.networks["lab"]
    net.leases = [lease(LAB_MAC, "192.168.160.130")]
    write_leases(lease_dir / "vbx0.status", net.leases)
    dom = fake.add(FakeDomain([(LAB_MAC, "network", "lab")], agent="disconnected"))
    domain_uuid = uuid.UUID(dom.uuid)
    dom.answer = AGENT_ANSWER
    watcher.domain_event(DomainEvent(uuid=domain_uuid, name="g", event="started", state="running"))
    assert seen(await next_addresses(sub)) == [(LAB_MAC, [("192.168.160.130", 24, "lease")])]
    await quiet(sub, 0.5)
    assert dom.asked == 0  # its agent is not connected: not asked, not even at the 0.3 s round

    watcher.guest_agent_event(domain_uuid, True)
    assert seen(await next_addresses(sub)) == [
        (
            LAB_MAC,
            [("10.100.0.5", 16, "agent"), ("192.168.160.130", 24, "agent"), ("2001:db8::5", 64, "agent")],
        )
    ]
    asked = dom.asked
    await until("the agent asked again", lambda: dom.asked > asked)  # every agent_every_s
    await quiet(sub, 0.2)  # the same answer: nothing published

    dom.answer = _error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding")
    asked = dom.asked
    await until("the agent asked again", lambda: dom.asked > asked)
    await quiet(sub, 0.2)  # no answer: what it said last stands

    watcher.guest_agent_event(domain_uuid, False)  # the agent went: the lease speaks again
    assert seen(await next_addresses(sub)) == [(LAB_MAC, [("192.168.160.130", 24, "lease")])]


async def test_the_neighbour_table_for_cards_no_other_source_knows(
    fake: FakeLibvirt, lease_dir: Path, tmp_path: Path, watched: tuple[AddressWatcher, Subscriber]
) -> None:
    watcher, sub = watched
    net = fake.networks["lab"]
    net.leases = [lease(LAB_MAC, "192.168.160.130")]
    write_leases(lease_dir / "vbx0.status", net.leases)
    dom = fake.add(FakeDomain([(LAB_MAC, "network", "lab"), (LAN_MAC, "bridge", "br0")]))
    watcher.domain_event(DomainEvent(uuid=uuid.UUID(dom.uuid), name="g", event="started", state="running"))
    assert seen(await next_addresses(sub)) == [(LAB_MAC, [("192.168.160.130", 24, "lease")])]
    (tmp_path / "arp").write_text(ARP)  # it has both cards: the lease still wins for the first
    assert seen(await next_addresses(sub)) == [
        (LAB_MAC, [("192.168.160.130", 24, "lease")]),
        (LAN_MAC, [("10.0.0.7", None, "arp"), ("10.0.0.9", None, "arp")]),
    ]
    await quiet(sub, 0.5)  # read at every poll, the same: nothing published


async def test_leases_go_with_their_network(
    fake: FakeLibvirt, lease_dir: Path, watched: tuple[AddressWatcher, Subscriber]
) -> None:
    watcher, sub = watched
    net = fake.networks["lab"]
    net.leases = [lease(LAB_MAC, "192.168.160.130")]
    write_leases(lease_dir / "vbx0.status", net.leases)
    dom = fake.add(FakeDomain([(LAB_MAC, "network", "lab")]))
    watcher.domain_event(DomainEvent(uuid=uuid.UUID(dom.uuid), name="g", event="started", state="running"))
    assert seen(await next_addresses(sub)) == [(LAB_MAC, [("192.168.160.130", 24, "lease")])]
    del fake.networks["lab"]
    watcher.network_event("lab", "stopped")
    assert (await next_addresses(sub)).nics == []


async def test_without_lease_files_leases_are_read_at_each_poll(fake: FakeLibvirt) -> None:
    hub = EventHub()
    sub = hub.subscribe()
    net = fake.networks["lab"]
    dom = fake.add(FakeDomain([(LAB_MAC, "network", "lab")]))
    watcher = AddressWatcher(
        FakeConnection(fake),  # type: ignore[arg-type]
        hub,
        lease_dir=None,
        arp_path=None,
        lease_check_s=0.05,
        poll_s=0.3,
    )
    watcher.start()
    try:
        await until("the first reading", lambda: net.reads >= 1)
        net.leases = [lease(LAB_MAC, "192.168.160.130")]
        started = time.monotonic()
        event = await next_addresses(sub)
        assert event.uuid == uuid.UUID(dom.uuid)
        assert time.monotonic() - started < 0.3 + 0.2  # at the next poll
        reads = net.reads
        await asyncio.sleep(0.7)
        assert 1 <= net.reads - reads <= 3  # every poll_s, not every check
    finally:
        await watcher.stop()


# -- the hub's side ----------------------------------------------------------------------------------
class StubDomain:
    def __init__(self, key: uuid.UUID) -> None:
        self.key = key

    def UUIDString(self) -> str:
        return str(self.key)

    def name(self) -> str:
        return "g"


class StubNetwork:
    def name(self) -> str:
        return "lab"


async def test_the_hub_hands_guest_agent_and_network_events_to_its_listeners() -> None:
    hub = EventHub()
    hub.pool_debounce_s = 0.01
    heard: list[tuple[Any, ...]] = []
    hub.add_guest_agent_listener(lambda key, connected: heard.append(("agent", key, connected)))
    hub.add_network_listener(lambda name, happened: heard.append(("network", name, happened)))
    key = uuid.uuid4()
    for state in (
        libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED,
        libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_DISCONNECTED,
    ):
        hub._on_guest_agent(None, StubDomain(key), state, 0, None)
    hub._on_network_lifecycle(None, StubNetwork(), libvirt.VIR_NETWORK_EVENT_STOPPED, 0, None)
    assert heard == [("agent", key, True), ("agent", key, False), ("network", "lab", "stopped")]
    await hub.stop()


async def test_after_a_reconnection_the_inventory_is_followed_by_every_domain_s_addresses() -> None:
    hub = EventHub()
    facts = HostFacts(
        hostname="h",
        uri="test:///default",
        hypervisor="test",
        accel="test",
        arch="x86_64",
        hvm_hardware_assisted=False,
        kvm_usable=False,
        cpus=1,
        memory_mib=1024,
        free_memory_mib=512,
        libvirt_version="9.0.0",
        agent_version="0",
    )

    async def inventory() -> InventoryEvent:
        return InventoryEvent(host=facts, domains=[])

    known = [
        AddressesEvent(
            uuid=uuid.uuid4(),
            nics=[NicAddresses(mac=LAB_MAC, addresses=[NicAddress(address=ip, family="ipv4", source="arp")])],
        )
        for ip in ("10.0.0.1", "10.0.0.2")
    ]
    hub.inventory = inventory
    hub.followers = lambda: known
    sub = hub.subscribe()
    await hub._resend_inventory()  # what attach() runs after a reconnection
    sent = [json.loads(sub.queue.get_nowait() or "") for _ in range(3)]
    assert [m["type"] for m in sent] == ["inventory", "addresses", "addresses"]
    assert [AddressesEvent.model_validate(m) for m in sent[1:]] == known
    assert sub.queue.empty()


# -- the test driver -------------------------------------------------------------------------------
GUEST_AGENT_DOMAIN = """<domain type='test'>
  <name>{name}</name><memory>131072</memory><os><type>hvm</type></os>
  <devices>
    <interface type='network'><mac address='{mac}'/><source network='default'/></interface>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>"""


@pytest.fixture
def test_driver() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open("test:///default")
    try:
        yield conn
    finally:
        conn.close()


async def test_the_test_driver_answers_for_guest_agents_and_has_no_leases(
    test_driver: libvirt.virConnect, caplog: pytest.LogCaptureFixture
) -> None:
    """The test driver's domain "test" has a card on "default" and no guest agent channel; it
    has no DHCPLeases (so no lease source), and answers interfaceAddresses with made-up
    addresses for any domain: only the one with a channel may be asked."""
    name, mac = f"qga-{uuid.uuid4().hex[:6]}", "52:54:00:aa:00:01"
    dom = test_driver.defineXML(GUEST_AGENT_DOMAIN.format(name=name, mac=mac))
    dom.create()
    hub = EventHub()
    sub = hub.subscribe()
    connection = FakeConnection(test_driver)
    watcher = AddressWatcher(connection, hub, lease_dir=None, arp_path=None, lease_check_s=0.05, poll_s=0.2)  # type: ignore[arg-type]
    caplog.set_level("INFO", logger="agent.addresses")
    watcher.start()
    try:
        event = await next_addresses(sub)
        assert event.uuid == uuid.UUID(dom.UUIDString())
        [(card, [(address, prefix, source)])] = seen(event)
        assert (card, prefix, source) == (mac, 24, "agent") and address.startswith("192.168.122.")
        await quiet(sub, 0.5)  # "test" is never asked, and polls change nothing
        assert "no DHCP leases from this libvirt" in caplog.text
        assert connection.calls.count("reading DHCP leases") == 1  # not asked again

        dom.destroy()
        watcher.domain_event(
            DomainEvent(uuid=uuid.UUID(dom.UUIDString()), name=name, event="stopped", state="shutoff")
        )
        assert (await next_addresses(sub)).nics == []
    finally:
        await watcher.stop()
        if dom.isActive():
            dom.destroy()
        dom.undefine()


# -- over the events socket, with an agent on a test driver of its own --------------------------------
NODE = """<node>
  <domain type='test'>
    <name>qga</name>
    <uuid>{qga}</uuid>
    <memory>131072</memory><os><type>hvm</type></os>
    <devices>
      <interface type='network'><mac address='52:54:00:aa:01:01'/><source network='default'/></interface>
      <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    </devices>
  </domain>
  <domain type='test'>
    <name>plain</name>
    <uuid>{plain}</uuid>
    <memory>131072</memory><os><type>hvm</type></os>
    <devices>
      <interface type='network'><mac address='52:54:00:aa:01:02'/><source network='default'/></interface>
    </devices>
  </domain>
  <network>
    <name>default</name>
    <forward mode='nat'/>
    <bridge name='virbr0'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
    </ip>
  </network>
</node>
"""
QGA, PLAIN = uuid.uuid4(), uuid.uuid4()


@pytest.fixture(scope="module")
def node_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """An agent on a test driver whose running domains are `qga` (a guest agent channel, which
    the test driver answers for with made-up addresses) and `plain` (none)."""
    base = tmp_path_factory.mktemp("addresses")
    node = base / "node.xml"
    node.write_text(NODE.format(qga=QGA, plain=PLAIN))
    pool = base / "pool"
    pool.mkdir()
    agent = launch_agent(uri=f"test://{node}", pool_dir=pool, log_path=base / "agent.log")
    try:
        yield agent
    finally:
        stop_agent(agent)


async def _event(ws: aiohttp.ClientWebSocketResponse) -> Any:
    """The next event but heartbeats and stats (which come at their own pace)."""
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            event = EVENT.validate_python(json.loads(msg.data))
            if not isinstance(event, HeartbeatEvent | StatsEvent):
                return event


async def _addresses_of(ws: aiohttp.ClientWebSocketResponse, domain_uuid: uuid.UUID) -> AddressesEvent:
    async with asyncio.timeout(10):  # (heartbeats come meanwhile: each wait alone never ends)
        while True:
            event = await _event(ws)
            if isinstance(event, AddressesEvent) and event.uuid == domain_uuid:
                return event


async def test_a_subscriber_gets_every_domain_s_addresses_after_the_inventory(
    node_agent: RunningAgent,
) -> None:
    async with AgentClient(node_agent.url, node_agent.secret) as client:
        async with client.events() as first:
            inventory = await _event(first)
            assert isinstance(inventory, InventoryEvent)
            assert {d.name: d.state for d in inventory.domains} == {"qga": "running", "plain": "running"}
            # Right after the inventory, or as soon as the agent has asked (it may have just started).
            known = await _addresses_of(first, QGA)
            [(mac, [(address, prefix, source)])] = seen(known)
            assert (mac, prefix, source) == ("52:54:00:aa:01:01", 24, "agent")
            assert address.startswith("192.168.122.")

            async with client.events() as second:
                assert isinstance(await _event(second), InventoryEvent)
                # Nothing between the two: the picture is whole before any change comes.
                assert await _event(second) == known
                # ("plain" has no guest agent and the test driver has no leases: it has none.)

                await client.destroy(QGA)
                gone = await _addresses_of(second, QGA)
                assert gone.nics == []
                # (The first may have heard the addresses twice: published while it waited for its
                # inventory, and again after it. Each event is the whole picture: no harm.)
                async with asyncio.timeout(10):
                    while (await _addresses_of(first, QGA)).nics:
                        pass
            async with client.events() as third:
                assert isinstance(await _event(third), InventoryEvent)
                with contextlib.suppress(TimeoutError):  # (the next heartbeat comes before 3 s)
                    async with asyncio.timeout(3):
                        while True:
                            msg = await third.receive()
                            after = EVENT.validate_python(json.loads(msg.data))
                            assert not isinstance(after, AddressesEvent), after  # none known now
            await client.start(QGA)
            again = await _addresses_of(first, QGA)
            assert [n.mac for n in again.nics] == ["52:54:00:aa:01:01"]
            assert again.nics[0].addresses[0].source == "agent"
