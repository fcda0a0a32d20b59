"""A domain's network cards changed on a real QEMU guest (TCG), on an isolated host only
(tests/fleet/isolated.py), never on this machine's own libvirt, whose networks would change this
machine's bridges and firewall.

The agent runs inside the host as on a real one (TLS, pinned) and is asked over HTTPS. The test
guest boots on a NAT network of the host with DHCP; a second virtio card is hot-plugged on it and
appears in the guest's /sys/class/net, whose init starts udhcpc on it, so dnsmasq leases it an
address; its link is taken down (libvirt says so), it is moved to another network and then onto
a host bridge live, then unplugged (gone from the guest and both definitions); a card a paused
guest cannot release goes at the next boot, and shows so until the guest runs again and lets it
go; shut off, the first card gets another MAC, which the guest uses once started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from agent.client import AgentClient, AgentConflict, AgentInvalid, AgentNotFound
from agent.console_pipe import ConsolePipe
from agent.protocol import (
    DomainInfo,
    DomainSpec,
    KernelBoot,
    NetworkSpec,
    NicAttachRequest,
    NicChangeRequest,
    NicSpec,
)
from tests.agent.conftest import REPO
from tests.agent.test_networks_real import SLOW, BoxAgent, _unusable, eventually, inside, run_box_agent
from tests.fleet.isolated import IsolatedHost, start_isolated_host

BOX_NAME = "nicbox"
# 10.231.140.0/24: clear of tests/fleet (1-3), tests/e2e (20), tests/deploy (201), the networks'
# real tests (121) and the addresses' ones.
BOX_INDEX = 140
GUEST = REPO / ".cache" / "guest"
FIRST, SECOND, THIRD = "52:54:00:14:00:01", "52:54:00:14:00:02", "52:54:00:14:00:04"
RENAMED = "52:54:00:14:00:03"

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.asyncio,
    pytest.mark.skipif(_unusable() is not None, reason=str(_unusable())),
]


def _guest_recipe() -> int:
    try:
        first = (GUEST / "VERSION").read_text().splitlines()[0]
    except (OSError, IndexError):
        return 0
    return int(first.removeprefix("recipe=")) if first.startswith("recipe=") else 0


@pytest.fixture(scope="module")
def guest_files() -> tuple[Path, Path]:
    """The test guest, one whose init asks for an address on cards hot-plugged after boot too."""
    if _guest_recipe() < 5:
        pytest.skip(f"no test guest with DHCP on hot-plugged cards in {GUEST}: run tests/guest/build.sh")
    return GUEST / "vmlinuz", GUEST / "initrd.img"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedHost]:
    with start_isolated_host(BOX_NAME, BOX_INDEX, tmp_path_factory.mktemp("nics-real")) as host:
        yield host


@pytest.fixture(scope="module")
def box_agent(box: IsolatedHost) -> Iterator[BoxAgent]:
    with run_box_agent(box) as agent:
        yield agent


@pytest.fixture
async def client(box_agent: BoxAgent) -> AsyncIterator[AgentClient]:
    async with box_agent.client() as c:
        yield c


# -- what the host and the guest say -----------------------------------------------------------
def _lease(box: IsolatedHost, network: str, mac: str) -> str | None:
    """The IPv4 address dnsmasq leased to `mac` on `network`, if any."""
    for line in box.virsh("net-dhcp-leases", network).splitlines():
        match = re.search(rf"{re.escape(mac)}\s+ipv4\s+([0-9.]+)/", line)
        if match:
            return match.group(1)
    return None


def _iflist(box: IsolatedHost, domain: str, *, inactive: bool = False) -> dict[str, tuple[str, str, str]]:
    """`virsh domiflist`: MAC -> (type, source, model), live or for the next boot."""
    out = box.virsh("domiflist", domain, *(["--inactive"] if inactive else []))
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    return {row[4]: (row[1], row[2], row[3]) for row in rows}


def _link(box: IsolatedHost, domain: str, mac: str) -> str:
    """`virsh domif-getlink`: up or down."""
    return box.virsh("domif-getlink", domain, mac).strip().rsplit(None, 1)[-1]


async def _guest_nics(serial: ConsolePipe) -> dict[str, str]:
    """The guest kernel's cards (/sys/class/net, loopback aside): name -> MAC, typed on its
    serial console."""
    # The typed line has '$(': only the answer matches.
    await serial.send_bytes(
        b"echo NET-$(for n in /sys/class/net/eth*; do echo ${n##*/} $(cat $n/address); done)-END\n"
    )
    seen = b""
    async with asyncio.timeout(30):
        while (match := re.search(rb"NET-([0-9a-z: ]*)-END", seen)) is None:
            msg = await serial.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                seen += msg.data
            else:
                assert msg.type == aiohttp.WSMsgType.TEXT, msg  # presence notices
    words = match.group(1).decode().split()
    return dict(zip(words[::2], words[1::2], strict=True))


async def _until_guest(serial: ConsolePipe, mac: str, present: bool, within: float) -> float:
    """Seconds until a card with `mac` is (or is no longer) in the guest; fails after `within`."""
    started = time.monotonic()
    while (mac in (await _guest_nics(serial)).values()) != present:
        assert time.monotonic() - started < within, (
            f"{mac} {'never came' if present else 'stayed'} in the guest"
        )
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def _read_until(ws: ConsolePipe, needle: bytes, timeout: float) -> None:
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                seen += msg.data
            else:
                assert msg.type == aiohttp.WSMsgType.TEXT, (msg, seen[-500:])


def _nic(info: DomainInfo, mac: str) -> tuple[str, str, str | None, str, str | None]:
    [nic] = [n for n in info.nics if n.mac == mac]
    return nic.source, nic.name, nic.model, nic.link, nic.pending


async def test_cards_hot_plugged_changed_and_unplugged_on_a_real_guest(
    box_agent: BoxAgent, client: AgentClient, guest_files: tuple[Path, Path]
) -> None:
    box = box_agent.box
    suffix = uuid.uuid4().hex[:6]
    lan, dmz, idle = f"lan-{suffix}", f"dmz-{suffix}", f"idle-{suffix}"
    lan_bridge = f"brn{suffix}"
    for name, third in ((lan, 160), (dmz, 161)):
        await client.define_network(
            NetworkSpec(
                name=name,
                mode="nat",
                ipv4=f"192.168.{third}.1/24",
                dhcp_start=f"192.168.{third}.100",
                dhcp_end=f"192.168.{third}.200",
            )
        )
    await client.define_network(NetworkSpec(name=idle, mode="isolated", start=False, autostart=False))
    kernel, initrd = guest_files
    for src in (kernel, initrd):
        shutil.copyfile(src, Path(box.pool_dir) / src.name)
    spec = DomainSpec(
        uuid=uuid.uuid4(),
        name=f"nics-{suffix}",
        memory_mib=256,
        nics=[NicSpec(source="network", name=lan, mac=FIRST, model="virtio")],
        boot=KernelBoot(
            kernel=f"{box.pool_dir}/vmlinuz",
            initrd=f"{box.pool_dir}/initrd.img",
            cmdline="console=ttyS0 quiet",
        ),
    )
    try:
        await client.define(spec)
        await client.start(spec.uuid)
        async with client.open_serial(spec.uuid) as serial:
            await _read_until(serial, b"DOMUS-TEST-GUEST READY", timeout=SLOW)
            assert list((await _guest_nics(serial)).values()) == [FIRST]
            first_lease = await eventually(
                "the first card's lease", lambda: _lease(box, lan, FIRST), timeout=120
            )
            print(f"first card: {first_lease}")

            # Refused before anything is done: a network that is not running, a bridge the host
            # (its own sysfs, inside the namespace) does not have.
            with pytest.raises(AgentConflict) as refused:
                await client.attach_nic(spec.uuid, NicAttachRequest(nic=NicSpec(name=idle, mac=SECOND)))
            assert (
                refused.value.detail
                == f"nic.name: network {idle!r} is not running, and {spec.name} is: start it first"
            )
            with pytest.raises(AgentInvalid) as invalid:
                await client.attach_nic(
                    spec.uuid, NicAttachRequest(nic=NicSpec(source="bridge", name="br-nope", mac=SECOND))
                )
            assert invalid.value.detail.startswith(
                "nic.name: this host has no bridge 'br-nope' (its bridges: "
            )
            assert "virbr" in invalid.value.detail  # the networks' bridges are there

            # Hot-plugged, as a job makes it: the same call again (a retried job) is answered from memory.
            request = NicAttachRequest(nic=NicSpec(source="network", name=lan, mac=SECOND))
            job = box_agent.client()
            job.idempotency_key = "job-nic-1"
            async with job:
                started = time.monotonic()
                attached = await job.attach_nic(spec.uuid, request)
                answered = time.monotonic()
                assert await job.attach_nic(spec.uuid, request) == attached
            print(f"attach answered after {answered - started:.1f} s: {attached.detail}")
            assert (attached.mac, attached.applied) == (SECOND, "now"), attached
            assert _nic(attached.domain, SECOND) == ("network", lan, "virtio", "up", None)
            assert _iflist(box, spec.name)[SECOND] == ("network", lan, "virtio")
            assert _iflist(box, spec.name, inactive=True)[SECOND] == ("network", lan, "virtio")
            seen = await _until_guest(serial, SECOND, present=True, within=30)
            print(f"the hot-plugged card in the guest's /sys/class/net after {seen:.1f} s")
            leased = await eventually(
                "the hot-plugged card's lease", lambda: _lease(box, lan, SECOND), timeout=120
            )
            took = time.monotonic() - answered
            print(f"the hot-plugged card leased {leased} {took:.1f} s after the attach answered")
            assert leased != first_lease and leased.startswith("192.168.160.")
            again = await client.attach_nic(spec.uuid, request)  # no key: the same card, answered as it is
            assert (again.applied, again.detail) == ("now", f"{SECOND} is already attached")

            # Its link down, then up: libvirt says so.
            down = await client.change_nic(spec.uuid, SECOND, NicChangeRequest(link="down"))
            assert (down.applied, _nic(down.domain, SECOND)) == (
                "now",
                ("network", lan, "virtio", "down", None),
            ), down
            assert _link(box, spec.name, SECOND) == "down"
            inactive = box.virsh("dumpxml", "--inactive", spec.name)
            assert re.search(rf"{SECOND}'/>.*?<link state='down'/>", inactive, re.S)
            up = await client.change_nic(spec.uuid, SECOND, NicChangeRequest(link="up"))
            assert up.applied == "now" and _link(box, spec.name, SECOND) == "up"

            # Onto another network, live.
            moved = await client.change_nic(spec.uuid, SECOND, NicChangeRequest(source="network", name=dmz))
            print(f"moved to {dmz}: {moved.applied} ({moved.detail})")
            assert moved.applied == "now", moved
            assert _nic(moved.domain, SECOND) == ("network", dmz, "virtio", "up", None)
            assert _iflist(box, spec.name)[SECOND] == ("network", dmz, "virtio")
            assert _iflist(box, spec.name, inactive=True)[SECOND] == ("network", dmz, "virtio")

            # Onto a host bridge (another kind of source), live: its tap moves to that bridge.
            inside(box, "ip", "link", "add", lan_bridge, "type", "bridge")
            inside(box, "ip", "link", "set", lan_bridge, "up")
            bridged = await client.change_nic(
                spec.uuid, SECOND, NicChangeRequest(source="bridge", name=lan_bridge)
            )
            assert (bridged.applied, bridged.detail) == ("now", f"{SECOND}: on bridge {lan_bridge!r}")
            assert _nic(bridged.domain, SECOND) == ("bridge", lan_bridge, "virtio", "up", None)
            assert _iflist(box, spec.name)[SECOND] == ("bridge", lan_bridge, "virtio")
            assert _iflist(box, spec.name, inactive=True)[SECOND] == ("bridge", lan_bridge, "virtio")
            [tap] = [n.target for n in bridged.domain.nics if n.mac == SECOND]
            assert f"{tap}: " in inside(box, "bridge", "link", "show", "master", lan_bridge)

            # Unplugged: gone from the guest and from both definitions.
            started = time.monotonic()
            detached = await client.detach_nic(spec.uuid, SECOND)
            print(f"detach: {detached.applied} after {time.monotonic() - started:.1f} s ({detached.detail})")
            assert (detached.mac, detached.applied) == (SECOND, "now"), detached
            assert [n.mac for n in detached.domain.nics] == [FIRST]
            assert SECOND not in _iflist(box, spec.name) and SECOND not in _iflist(
                box, spec.name, inactive=True
            )
            gone = await _until_guest(serial, SECOND, present=False, within=10)
            print(f"gone from the guest's /sys/class/net {gone:.1f} s after the detach answered")
            with pytest.raises(AgentNotFound):
                await client.detach_nic(spec.uuid, SECOND)

            # A paused guest cannot give a card back: it goes at the next boot, and shows so ...
            await client.attach_nic(
                spec.uuid, NicAttachRequest(nic=NicSpec(source="network", name=lan, mac=THIRD))
            )
            await _until_guest(serial, THIRD, present=True, within=30)
            await client.suspend(spec.uuid)
            started = time.monotonic()
            held = await client.detach_nic(spec.uuid, THIRD)
            took = time.monotonic() - started
            print(f"detach from a paused guest: {held.applied} after {took:.1f} s ({held.detail})")
            assert held.applied == "next boot" and 9 < took < 20
            assert held.detail == f"the guest did not release {THIRD}: it is removed from the next boot"
            assert _nic(held.domain, THIRD) == ("network", lan, "virtio", "up", "detach")
            assert THIRD in _iflist(box, spec.name) and THIRD not in _iflist(box, spec.name, inactive=True)
            # ... until the guest runs again and releases it: libvirt's event reaches the agent's cache.
            await client.resume(spec.uuid)

            async def released() -> bool:
                return THIRD not in [n.mac for n in (await client.get_domain(spec.uuid)).nics]

            deadline = time.monotonic() + 60
            while not await released():
                assert time.monotonic() < deadline, "the resumed guest never released the card"
                await asyncio.sleep(0.5)
            await _until_guest(serial, THIRD, present=False, within=20)

            with pytest.raises(AgentConflict, match="shut it off first to change a card's MAC"):
                await client.change_nic(spec.uuid, FIRST, NicChangeRequest(mac=RENAMED))
        await client.destroy(spec.uuid)

        # Shut off: the first card gets another MAC, which the guest uses once started.
        renamed = await client.change_nic(spec.uuid, FIRST, NicChangeRequest(mac=RENAMED))
        assert (renamed.mac, renamed.applied) == (RENAMED, "now")
        assert [n.mac for n in renamed.domain.nics] == [RENAMED]
        assert list(_iflist(box, spec.name, inactive=True)) == [RENAMED]
        await client.start(spec.uuid)
        async with client.open_serial(spec.uuid) as serial:
            await _read_until(serial, b"DOMUS-TEST-GUEST READY", timeout=SLOW)
            assert list((await _guest_nics(serial)).values()) == [RENAMED]
        assert list(_iflist(box, spec.name)) == [RENAMED]
        renewed = await eventually("the renamed card's lease", lambda: _lease(box, lan, RENAMED), timeout=120)
        print(f"the card under its new MAC leased {renewed}")
    finally:
        with contextlib.suppress(AgentNotFound):
            await client.destroy(spec.uuid)
            await client.delete(spec.uuid, delete_disks=True)
        for name in (lan, dmz, idle):
            await client.delete_network(name)
        with contextlib.suppress(subprocess.CalledProcessError):  # (not made, if the test failed early)
            inside(box, "ip", "link", "del", lan_bridge)
