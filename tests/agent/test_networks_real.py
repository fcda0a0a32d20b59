"""Virtual networks against real libvirt, on an isolated host only (tests/fleet/isolated.py: a
libvirtd in network and mount namespaces of its own), never on this machine's qemu:///system,
whose networks would change this machine's bridges and firewall.

The agent runs inside the host, as on a real one (TLS, pinned, a fixed console secret), and is
asked over HTTPS: a NAT network with its bridge, address, firewall rules and dnsmasq; a static
DHCP host added live that a PXE-booting guest then gets its address from; the refusals while
that guest runs; bridge mode on a real bridge; and networks changed with virsh behind the
agent's back reaching its events socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from lxml import etree

from agent.client import AgentClient, AgentConflict, AgentInvalid, AgentNotFound
from agent.netxml import network_differences
from agent.protocol import (
    DhcpHost,
    DhcpSettings,
    DomainSpec,
    InventoryEvent,
    NetworkResult,
    NetworkSpec,
    NicSpec,
    PxeBoot,
)
from tests.agent.conftest import REPO, agent_init
from tests.agent.test_networks_api import EVENT, _network_in, _stats_until
from tests.agent.test_netxml import CASES
from tests.agent.test_netxml import spec as netxml_spec
from tests.fleet.isolated import IsolatedHost, IsolatedHostError, start_isolated_host

BOX_NAME = "netw"
BOX_INDEX = 121  # 10.231.121.0/24: clear of tests/fleet (1-3), tests/e2e (20) and tests/deploy (201)
AGENT_PORT = 8901
SLOW = 300.0
PUBLISHED = "published fresh resources after network changes"  # the agent's log, per publication
T = TypeVar("T")


def _unusable() -> str | None:
    if os.geteuid() != 0:
        return "isolated hosts need root"
    for tool in ("virsh", "libvirtd", "virtlogd", "dnsmasq", "iptables", "ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/bootstrap.sh installs it)"
    return None


pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.asyncio,
    pytest.mark.skipif(_unusable() is not None, reason=str(_unusable())),
]


@dataclass
class BoxAgent:
    box: IsolatedHost
    url: str
    secret: str
    fingerprint: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def client(self) -> AgentClient:
        return AgentClient(self.url, self.secret, fingerprint=self.fingerprint, timeout=SLOW)


def _healthy(url: str) -> bool:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only "is it up": no secret sent
    try:
        with urllib.request.urlopen(url + "/v1/health", context=context, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedHost]:
    with start_isolated_host(BOX_NAME, BOX_INDEX, tmp_path_factory.mktemp("networks-real")) as host:
        yield host


@pytest.fixture(scope="module")
def box_agent(box: IsolatedHost) -> Iterator[BoxAgent]:
    with run_box_agent(box) as agent:
        yield agent


@contextlib.contextmanager
def run_box_agent(box: IsolatedHost) -> Iterator[BoxAgent]:
    """The agent inside `box`, as on a real host, until the block ends."""
    state_dir = box.state_dir / "agent"
    url = f"https://{box.address}:{AGENT_PORT}"
    fingerprint, _code = agent_init(state_dir, url)
    secret = secrets.token_urlsafe(24)
    log_path = box.state_dir / "agent.log"
    argv = [
        *(sys.executable, "-m", "agent", "serve", "--uri", box.uri, "--listen", box.address),
        *("--port", str(AGENT_PORT), "--accel", "tcg", "--state-dir", str(state_dir)),
        *("--pool-path", box.pool_dir),
    ]
    env = dict(os.environ, DOMUS_AGENT_SECRET=secret, PYTHONUNBUFFERED="1")
    with log_path.open("ab") as out:
        proc = box.popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SLOW
        while not _healthy(url):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        yield BoxAgent(box=box, url=url, secret=secret, fingerprint=fingerprint, log_path=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def client(box_agent: BoxAgent) -> AsyncIterator[AgentClient]:
    async with box_agent.client() as c:
        yield c


def _autostart(box: IsolatedHost, network: str) -> str:
    fields = dict(line.split(":", 1) for line in box.virsh("net-info", network).splitlines() if ":" in line)
    return fields["Autostart"].strip()


def inside(box: IsolatedHost, *argv: str) -> str:
    return str(box.run(list(argv), capture_output=True, text=True, check=True, timeout=60).stdout)


def on_this_machine(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=60).stdout


def dnsmasq_of(box: IsolatedHost, network: str) -> list[int]:
    """The dnsmasq processes libvirt runs for `network` in the host."""
    found = []
    for pid in box.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dnsmasq") and f"/{network}.conf".encode() in b" ".join(argv):
            found.append(pid)
    return found


async def eventually(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


def _names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:6]
    return f"domus-net-{suffix}", f"vbdn{suffix}"  # a network, and its bridge (15 characters at most)


async def test_a_nat_network_runs_for_real(box_agent: BoxAgent, client: AgentClient) -> None:
    box = box_agent.box
    name, bridge = _names()
    web = DhcpHost(mac="52:54:00:15:00:10", ip="192.168.150.10", name="web")
    spec = NetworkSpec(
        name=name,
        mode="nat",
        bridge=bridge,
        ipv4="192.168.150.1/24",
        dhcp_start="192.168.150.100",
        dhcp_end="192.168.150.200",
        hosts=[web],
    )
    defined = await client.define_network(spec)
    assert defined.detail == f"network {name!r}: defined, started, set to start with the host"
    assert defined.network is not None
    assert (defined.network.active, defined.network.bridge, defined.network.ipv4) == (
        True,
        bridge,
        "192.168.150.1/24",
    )
    try:
        # The bridge has the address, in the host's namespace only.
        assert "192.168.150.1/24" in inside(box, "ip", "-br", "addr", "show", "dev", bridge)
        assert bridge not in on_this_machine("ip", "-br", "link")
        # Guests' traffic is masqueraded there (and this machine's firewall is untouched).
        assert "192.168.150.0/24" in inside(box, "iptables-save")
        assert "192.168.150.0/24" not in on_this_machine("iptables", "-t", "nat", "-S")
        # dnsmasq serves it: the range, and the static host.
        assert dnsmasq_of(box, name)  # (with its lease helper, a second process)
        conf = box.inside_path(f"/var/lib/libvirt/dnsmasq/{name}.conf").read_text()
        assert "dhcp-range=192.168.150.100,192.168.150.200" in conf
        hostsfile = box.inside_path(f"/var/lib/libvirt/dnsmasq/{name}.hostsfile").read_text()
        assert "52:54:00:15:00:10,192.168.150.10,web" in hostsfile
        assert _autostart(box, name) == "yes"  # libvirt agrees
        off = await client.set_network_autostart(name, False)
        assert off.network is not None and off.network.autostart is False
        assert _autostart(box, name) == "no"

        # Retried (a job whose worker died): the same network, as it is.
        again = await client.define_network(spec)
        assert again.detail == f"network {name!r} is already defined" and again.network == off.network
        with pytest.raises(
            AgentConflict, match=r"already exists with another definition \(mode nat, not route"
        ):
            await client.define_network(spec.model_copy(update={"mode": "route"}))

        stopped = await client.network_action(name, "stop")
        assert stopped.network is not None and stopped.network.active is False
        assert bridge not in inside(box, "ip", "-br", "link")
        assert dnsmasq_of(box, name) == []
        started = await client.network_action(name, "start")
        assert started.network is not None and started.network.active is True
        assert "192.168.150.1/24" in inside(box, "ip", "-br", "addr", "show", "dev", bridge)
    finally:
        deleted = await client.delete_network(name)
    assert deleted.detail == f"network {name!r}: stopped, undefined"
    assert name not in box.virsh("net-list", "--all", "--name").split()
    assert bridge not in inside(box, "ip", "-br", "link")
    assert dnsmasq_of(box, name) == []


@pytest.mark.parametrize("case", sorted(CASES))
async def test_every_golden_network_defines_and_starts(
    box_agent: BoxAgent, client: AgentClient, case: str
) -> None:
    """What the schema accepts, libvirt runs: each mode's XML (golden files), started for real."""
    box = box_agent.box
    spec = netxml_spec(case)
    if spec.mode == "bridge":
        inside(box, "ip", "link", "add", str(spec.bridge), "type", "bridge")
    try:
        result = await client.define_network(spec)
        assert result.detail == f"network {spec.name!r}: defined, started, set to start with the host"
        assert result.network is not None and result.network.active
        assert network_differences(result.network, spec) == []  # libvirt kept what was asked
        if spec.ipv4 is not None and result.network.bridge is not None:
            assert spec.ipv4 in inside(box, "ip", "-br", "addr", "show", "dev", result.network.bridge)
        if spec.ipv6 is not None and result.network.bridge is not None:
            assert spec.ipv6 in inside(box, "ip", "-br", "addr", "show", "dev", result.network.bridge)
        await client.delete_network(spec.name)
    finally:
        if spec.mode == "bridge":
            inside(box, "ip", "link", "del", str(spec.bridge))


def _lease(box: IsolatedHost, network: str, mac: str) -> str | None:
    for line in box.virsh("net-dhcp-leases", network).splitlines():
        if mac in line:
            return line
    return None


async def test_a_static_host_added_live_is_what_a_guest_gets(
    box_agent: BoxAgent, client: AgentClient
) -> None:
    """The static host is added while the network runs; a guest with that MAC then boots from the
    network (iPXE asks dnsmasq for an address) and gets the host's address, outside the range.
    While it runs, the network is neither stopped nor deleted."""
    box = box_agent.box
    name, bridge = _names()
    await client.define_network(
        NetworkSpec(
            name=name,
            mode="nat",
            bridge=bridge,
            ipv4="192.168.151.1/24",
            dhcp_start="192.168.151.100",
            dhcp_end="192.168.151.200",
        )
    )
    guest_mac = "52:54:00:15:01:42"
    guest = DomainSpec(
        uuid=uuid.uuid4(),
        name=f"pxe-{uuid.uuid4().hex[:6]}",
        memory_mib=128,
        nics=[NicSpec(source="network", name=name, mac=guest_mac, model="virtio")],
        boot=PxeBoot(),
    )
    try:
        pinned = DhcpHost(mac=guest_mac, ip="192.168.151.42", name="pxe-guest")
        changed = await client.update_network_dhcp(
            name, DhcpSettings(dhcp_start="192.168.151.100", dhcp_end="192.168.151.200", hosts=[pinned])
        )
        assert changed.detail == (
            f"network {name!r}: DHCP range 192.168.151.100 to 192.168.151.200, 1 static host(s); "
            "in effect now and from its next start"
        )
        assert changed.network is not None and changed.network.hosts == [pinned]
        for flags in ((), ("--inactive",)):  # the running network and its definition
            dumped = etree.fromstring(box.virsh("net-dumpxml", *flags, name).encode())
            assert [dict(h.attrib) for h in dumped.iterfind("ip/dhcp/host")] == [
                {"mac": guest_mac, "name": "pxe-guest", "ip": "192.168.151.42"}
            ]

        await client.define(guest)
        await client.start(guest.uuid)
        lease = await eventually(
            "the PXE guest's DHCP lease", lambda: _lease(box, name, guest_mac), timeout=SLOW
        )
        assert "192.168.151.42/24" in lease

        info = await client.get_domain(guest.uuid)
        assert [(n.mac, n.source, n.name, n.model) for n in info.nics] == [
            (guest_mac, "network", name, "virtio")
        ]
        assert info.nics[0].target is not None and info.nics[0].target.startswith("vnet")

        refusals: list[Callable[[], Awaitable[NetworkResult]]] = [
            lambda: client.network_action(name, "stop"),
            lambda: client.delete_network(name),
        ]
        for refuse in refusals:
            with pytest.raises(
                AgentConflict, match=rf"is used by running domain\(s\) {guest.name}: shut them off"
            ):
                await refuse()
        assert bridge in inside(box, "ip", "-br", "link")  # refused before anything was done
        await client.destroy(guest.uuid)
        assert (await client.network_action(name, "stop")).detail == f"network {name!r} stopped"
    finally:
        with contextlib.suppress(AgentNotFound):  # (never defined, if the test failed early)
            await client.delete(guest.uuid, delete_disks=True)
        await client.delete_network(name)


async def test_bridge_mode_joins_a_real_bridge(box_agent: BoxAgent, client: AgentClient) -> None:
    box = box_agent.box
    suffix = uuid.uuid4().hex[:6]
    lan = f"brl{suffix}"
    inside(box, "ip", "link", "add", lan, "type", "bridge")
    try:
        with pytest.raises(AgentInvalid) as info:
            await client.define_network(
                NetworkSpec(name=f"lan-{suffix}", mode="bridge", bridge=f"brx{suffix}")
            )
        assert info.value.detail.startswith(f"bridge: this host has no bridge 'brx{suffix}' (its bridges: ")
        assert lan in info.value.detail
        with pytest.raises(AgentInvalid) as info:
            await client.define_network(NetworkSpec(name=f"nat-{suffix}", mode="isolated", bridge="eth0"))
        assert info.value.detail.startswith("bridge: this host already has an interface 'eth0'")

        result = await client.define_network(NetworkSpec(name=f"lan-{suffix}", mode="bridge", bridge=lan))
        assert result.network is not None
        assert (result.network.forward, result.network.bridge, result.network.active) == ("bridge", lan, True)
        resources = (await client.host()).resources
        assert resources is not None and lan in resources.bridges  # still joinable directly
        assert (
            await client.delete_network(f"lan-{suffix}")
        ).detail == f"network 'lan-{suffix}': stopped, undefined"
        assert lan in inside(box, "ip", "-br", "link")  # the host's bridge stays
    finally:
        inside(box, "ip", "link", "del", lan)


async def test_networks_changed_with_virsh_reach_the_events_socket(
    box_agent: BoxAgent, client: AgentClient
) -> None:
    box = box_agent.box
    name, bridge = _names()
    root = etree.Element("network")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "bridge", name=bridge)
    etree.SubElement(root, "ip", address="192.168.152.1", prefix="24")
    xml_path = box.state_dir / f"{name}.xml"
    xml_path.write_bytes(etree.tostring(root))
    async with client.events() as ws:
        msg = await asyncio.wait_for(ws.receive(), timeout=SLOW)
        inventory = EVENT.validate_python(json.loads(msg.data))
        assert isinstance(inventory, InventoryEvent) and inventory.host.resources is not None
        assert _network_in(name, inventory.host.resources) is None
        published = box_agent.log().count(PUBLISHED)
        try:
            box.virsh("net-define", str(xml_path))
            box.virsh("net-start", name)
            event = await _stats_until(ws, lambda r: getattr(_network_in(name, r), "active", False))
            seen = _network_in(name, event.resources)
            assert seen is not None
            assert (seen.forward, seen.bridge, seen.ipv4, seen.persistent) == (
                "isolated",
                bridge,
                "192.168.152.1/24",
                True,
            )
            log = box_agent.log()
            assert f"network {name} defined" in log and f"network {name} started" in log  # heard from libvirt
            # Its own publication, not only the periodic stats (which may have come first: the
            # publication waits out the debounce, so give it a few seconds to be logged).
            deadline = time.monotonic() + 10
            while box_agent.log().count(PUBLISHED) <= published and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert box_agent.log().count(PUBLISHED) > published
        finally:
            for command in ("net-destroy", "net-undefine"):
                with contextlib.suppress(IsolatedHostError):  # (not there, if the test failed early)
                    box.virsh(command, name)
        await _stats_until(ws, lambda r: _network_in(name, r) is None)
        log = box_agent.log()
        assert f"network {name} stopped" in log and f"network {name} undefined" in log
