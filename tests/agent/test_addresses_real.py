"""Guests' addresses on a real host: an isolated one (tests/fleet/isolated.py), never this machine's
qemu:///system, whose networks would change this machine's bridges and firewall.

The agent runs inside the host, as on a real one. The test guest (tests/guest/build.sh: it asks for
an address with udhcpc on every card at boot) is booted on a NAT network with DHCP: its lease
reaches the events socket within seconds of libvirt knowing it (the delay is measured and printed),
and its stop empties its addresses. On a host bridge, where libvirt gives no lease, the host's
neighbour table tells its address; and the host's own address on that bridge is in the host's
resources."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.client import AgentClient, AgentNotFound
from agent.protocol import (
    AddressesEvent,
    DomainSpec,
    HeartbeatEvent,
    InventoryEvent,
    KernelBoot,
    NetworkSpec,
    NicAddress,
    NicAddresses,
    NicSpec,
    StatsEvent,
)
from tests.agent.conftest import REPO
from tests.agent.test_networks_api import EVENT
from tests.agent.test_networks_real import SLOW, BoxAgent, _unusable, eventually, inside, run_box_agent
from tests.fleet.isolated import IsolatedHost, start_isolated_host

BOX_NAME = "addr"
BOX_INDEX = (
    123  # 10.231.123.0/24: clear of tests/fleet (1-3), tests/e2e (20), test_networks_real (121), deploy (201)
)
GUEST_DIR = REPO / ".cache" / "guest"
# How soon after libvirt has a lease its event must come: the lease files are looked at every 2 s.
LEASE_EVENT_S = 4.0


def _no_guest() -> str | None:
    if not ((GUEST_DIR / "vmlinuz").exists() and (GUEST_DIR / "initrd.img").exists()):
        return f"no test guest in {GUEST_DIR}: run tests/guest/build.sh"
    return None


pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.asyncio,
    pytest.mark.skipif(_unusable() is not None, reason=str(_unusable())),
    pytest.mark.skipif(_no_guest() is not None, reason=str(_no_guest())),
]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedHost]:
    with start_isolated_host(BOX_NAME, BOX_INDEX, tmp_path_factory.mktemp("addresses-real")) as host:
        for name in ("vmlinuz", "initrd.img"):
            shutil.copyfile(GUEST_DIR / name, Path(host.pool_dir, name))
        yield host


@pytest.fixture(scope="module")
def box_agent(box: IsolatedHost) -> Iterator[BoxAgent]:
    with run_box_agent(box) as agent:
        yield agent


@pytest.fixture
async def client(box_agent: BoxAgent) -> AsyncIterator[AgentClient]:
    async with box_agent.client() as c:
        yield c


def guest_spec(box: IsolatedHost, nic: NicSpec) -> DomainSpec:
    return DomainSpec(
        uuid=uuid.uuid4(),
        name=f"addr-{uuid.uuid4().hex[:6]}",
        memory_mib=96,
        nics=[nic],
        boot=KernelBoot(
            kernel=f"{box.pool_dir}/vmlinuz", initrd=f"{box.pool_dir}/initrd.img", cmdline="console=ttyS0"
        ),
    )


async def next_event(ws: aiohttp.ClientWebSocketResponse) -> Any:
    """The next event but heartbeats and stats."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout=SLOW)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        event = EVENT.validate_python(json.loads(msg.data))
        if not isinstance(event, HeartbeatEvent | StatsEvent):
            return event


async def addresses_of(
    ws: aiohttp.ClientWebSocketResponse, domain_uuid: uuid.UUID, *, empty: bool, timeout: float
) -> tuple[AddressesEvent, float]:
    """The next AddressesEvent of the domain with (or, with `empty`, without) addresses, and when
    it came (time.time())."""
    async with asyncio.timeout(timeout):
        while True:
            event = await next_event(ws)
            if isinstance(event, AddressesEvent) and event.uuid == domain_uuid and (not event.nics) == empty:
                return event, time.time()


def virsh_lease(box: IsolatedHost, network: str, mac: str) -> str | None:
    """The guest's IPv4 address as `virsh net-dhcp-leases` shows it, if it does."""
    for line in box.virsh("net-dhcp-leases", network).splitlines():
        match = re.search(rf"{mac}\s+ipv4\s+([0-9.]+)/24", line)
        if match:
            return match.group(1)
    return None


async def when_virsh_shows(box: IsolatedHost, network: str, mac: str) -> tuple[str, float]:
    """Poll virsh until it shows the lease: its address, and when it was first seen (time.time())."""
    deadline = time.monotonic() + SLOW
    while time.monotonic() < deadline:
        address = await asyncio.to_thread(virsh_lease, box, network, mac)
        if address is not None:
            return address, time.time()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no lease for {mac} on {network}")


async def test_a_lease_reaches_the_events_socket_within_seconds(
    box_agent: BoxAgent, client: AgentClient
) -> None:
    box = box_agent.box
    suffix = uuid.uuid4().hex[:6]
    network, bridge = f"domus-net-{suffix}", f"vbda{suffix}"
    await client.define_network(
        NetworkSpec(
            name=network,
            mode="nat",
            bridge=bridge,
            ipv4="192.168.153.1/24",
            dhcp_start="192.168.153.100",
            dhcp_end="192.168.153.200",
        )
    )
    mac = "52:54:00:15:03:01"
    guest = guest_spec(box, NicSpec(source="network", name=network, mac=mac, model="virtio"))
    try:
        async with client.events() as ws:
            assert isinstance(await next_event(ws), InventoryEvent)
            await client.define(guest)
            await client.start(guest.uuid)
            started = time.time()
            (leased, seen_by_virsh), (event, came) = await asyncio.gather(
                when_virsh_shows(box, network, mac), addresses_of(ws, guest.uuid, empty=False, timeout=SLOW)
            )
            assert event.nics == [
                NicAddresses(
                    mac=mac, addresses=[NicAddress(address=leased, prefix=24, family="ipv4", source="lease")]
                )
            ]
            # What libvirt 9 keeps of the network's leases: its lease helper's file, named after
            # the bridge, rewritten on each change (the agent looks at it every 2 s).
            status = box.inside_path(f"/var/lib/libvirt/dnsmasq/{bridge}.status")
            written = status.stat().st_mtime
            assert {"ip-address": leased, "mac-address": mac}.items() <= json.loads(status.read_text())[
                0
            ].items()
            print(
                f"\nlease {leased}: written {written - started:.2f} s after the start, shown by virsh "
                f"{seen_by_virsh - written:.2f} s after it was written; the event came {came - written:.2f} s "
                f"after it was written ({came - seen_by_virsh:+.2f} s from virsh showing it)"
            )
            assert came - written < LEASE_EVENT_S
            assert came - seen_by_virsh < LEASE_EVENT_S

            # A subscriber that comes now starts from the whole picture: the inventory, then this.
            async with client.events() as late:
                assert isinstance(await next_event(late), InventoryEvent)
                assert await next_event(late) == event

            await client.destroy(guest.uuid)
            stopped_at = time.time()
            gone, came = await addresses_of(ws, guest.uuid, empty=True, timeout=10)
            print(f"stopped: nics=[] {came - stopped_at:.2f} s after the destroy")
            assert gone.nics == []
    finally:
        with contextlib.suppress(AgentNotFound):
            await client.delete(guest.uuid, delete_disks=True)
        await client.delete_network(network)


@contextlib.contextmanager
def dhcp_server(box: IsolatedHost, bridge: str, first: str, last: str) -> Iterator[Path]:
    """A dnsmasq of the test's own on `bridge` inside `box` (libvirt knows nothing of it): its
    lease file."""
    leases = box.state_dir / f"{bridge}.leases"
    argv = [
        *(
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            "--user=root",
        ),
        *(f"--interface={bridge}", "--except-interface=lo", f"--dhcp-range={first},{last},12h"),
        *(f"--dhcp-leasefile={leases}", f"--pid-file={box.state_dir / f'{bridge}.pid'}"),
    ]
    proc = box.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield leases
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_a_guest_on_a_host_bridge_is_found_in_the_neighbour_table(
    box_agent: BoxAgent, client: AgentClient
) -> None:
    box = box_agent.box
    bridge = f"brad{uuid.uuid4().hex[:6]}"
    inside(box, "ip", "link", "add", bridge, "type", "bridge")
    try:
        inside(box, "ip", "addr", "add", "192.168.154.1/24", "dev", bridge)
        inside(box, "ip", "link", "set", bridge, "up")
        resources = (await client.host()).resources
        assert resources is not None and bridge in resources.bridges
        assert resources.bridge_addresses[bridge] == ["192.168.154.1/24"]  # (its fe80:: one left out)

        mac = "52:54:00:15:04:01"
        guest = guest_spec(box, NicSpec(source="bridge", name=bridge, mac=mac, model="virtio"))
        with dhcp_server(box, bridge, "192.168.154.100", "192.168.154.200") as lease_file:
            async with client.events() as ws:
                assert isinstance(await next_event(ws), InventoryEvent)
                try:
                    await client.define(guest)
                    await client.start(guest.uuid)

                    def leased() -> str | None:
                        text = lease_file.read_text() if lease_file.exists() else ""
                        found = re.search(rf"{mac} ([0-9.]+) ", text)
                        return found.group(1) if found else None

                    address = await eventually("a lease from the test's dnsmasq", leased, timeout=SLOW)
                    # The host talks to it (as anything on the host that reaches a guest does).
                    await eventually(
                        "the guest answering ping",
                        lambda: (
                            box.run(
                                ["busybox", "ping", "-c", "1", "-W", "1", address], capture_output=True
                            ).returncode
                            == 0
                        ),
                    )
                    pinged = time.time()
                    event, came = await addresses_of(ws, guest.uuid, empty=False, timeout=30)
                    assert event.nics == [
                        NicAddresses(
                            mac=mac,
                            addresses=[NicAddress(address=address, prefix=None, family="ipv4", source="arp")],
                        )
                    ]
                    print(
                        f"\nneighbour {address}: the event came {came - pinged:.2f} s after the ping answered"
                    )
                    await client.destroy(guest.uuid)
                    gone, _came = await addresses_of(ws, guest.uuid, empty=True, timeout=10)
                    assert gone.nics == []
                finally:
                    with contextlib.suppress(AgentNotFound):
                        await client.delete(guest.uuid, delete_disks=True)
    finally:
        inside(box, "ip", "link", "del", bridge)
