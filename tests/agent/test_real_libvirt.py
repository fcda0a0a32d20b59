"""Against the host's real libvirt (qemu:///system): accel decision and a real guest's serial.

On this kind of host every libvirt call that consults QEMU capabilities is slow (tens of
seconds), hence the generous timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import libvirt
import pytest

from agent.client import AgentClient, AgentConflict
from agent.protocol import DiskSpec, DomainEvent, DomainSpec, KernelBoot
from tests.agent.conftest import REPO, RunningAgent, launch_agent, stop_agent
from tests.agent.fake_vnc import VncOverWebSocket, update_request
from tests.agent.test_events import next_event, wait_for_domain_event

URI = "qemu:///system"
POOL_PATH = Path("/var/lib/libvirt/images")
GUEST = REPO / ".cache" / "guest"
PREFIX = "domus-test-"
SLOW = 300.0  # seconds allowed for one libvirt operation on a slow host


def _libvirt_available() -> bool:
    if shutil.which("virsh") is None:
        return False
    result = subprocess.run(
        ["virsh", "-c", URI, "version"], capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode == 0


pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.asyncio,
    pytest.mark.skipif(not _libvirt_available(), reason=f"`virsh -c {URI} version` fails"),
]


@pytest.fixture(scope="module")
def real_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    log = tmp_path_factory.mktemp("real-agent") / "agent.log"
    # --accel auto on purpose: the KVM probe must fall back to TCG on this host.
    agent = launch_agent(uri=URI, pool_dir=POOL_PATH, log_path=log, accel="auto", ready_timeout=2 * SLOW)
    try:
        yield agent
    finally:
        stop_agent(agent)


def _force_cleanup(domain_uuid: uuid.UUID, paths: list[Path]) -> None:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # "not found" is expected here
    conn = libvirt.open(URI)
    try:
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByUUIDString(str(domain_uuid))
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        for path in paths:
            with contextlib.suppress(libvirt.libvirtError):
                conn.storageVolLookupByPath(str(path)).delete(0)
            path.unlink(missing_ok=True)
    finally:
        conn.close()


async def test_host_facts_choose_tcg(real_agent: RunningAgent) -> None:
    async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
        facts = await client.host()
    assert facts.hypervisor == "qemu" and facts.accel == "tcg" and facts.kvm_usable is False
    assert facts.default_pool_path == str(POOL_PATH)
    assert "accelerator: tcg" in real_agent.log()
    print(next(line for line in real_agent.log().splitlines() if "accelerator:" in line))


async def _read_until(ws: aiohttp.ClientWebSocketResponse, needle: bytes, timeout: float) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                continue  # a presence notice (who watches, who types), not console output
            assert msg.type == aiohttp.WSMsgType.BINARY, (msg, seen[-500:])
            seen += msg.data
    return seen


needs_guest = pytest.mark.skipif(
    not (GUEST / "vmlinuz").exists() or not (GUEST / "initrd.img").exists(),
    reason="test guest not built: run tests/guest/build.sh (.cache/guest/vmlinuz, initrd.img)",
)


def kernel_guest(label: str, *, disks: list[DiskSpec] | None = None) -> tuple[DomainSpec, Path, Path]:
    """A spec booting the test guest's kernel and initrd, copied into the pool for it."""
    name = f"{PREFIX}{label}"
    kernel, initrd = POOL_PATH / f"{name}-vmlinuz", POOL_PATH / f"{name}-initrd.img"
    shutil.copyfile(GUEST / "vmlinuz", kernel)
    shutil.copyfile(GUEST / "initrd.img", initrd)
    spec = DomainSpec(
        uuid=uuid.uuid4(),
        name=name,
        memory_mib=256,
        disks=disks or [],
        boot=KernelBoot(kernel=kernel.name, initrd=initrd.name, cmdline="console=ttyS0 quiet"),
    )
    return spec, kernel, initrd


@needs_guest
async def test_a_delete_with_disks_keeps_those_it_is_told_to(real_agent: RunningAgent) -> None:
    """The console names the disks that are not the domain's to delete (another team's, the
    site's library, another domain's too: domains.volumes): the agent deletes the rest only."""
    spec, kernel, initrd = kernel_guest(
        uuid.uuid4().hex[:8], disks=[DiskSpec(size_gib=0.0625), DiskSpec(size_gib=0.0625)]
    )
    own, foreign = (POOL_PATH / f"{spec.name}-{spec.uuid.hex[:8]}-disk{i}.qcow2" for i in (0, 1))
    try:
        async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
            await client.define(spec)
            assert own.exists() and foreign.exists()
            result = await client.delete(spec.uuid, delete_disks=True, keep=[str(foreign)])
            assert result.deleted_volumes == [str(own)] and result.kept_volumes == [str(foreign)]
            assert not own.exists() and foreign.exists()
    finally:
        _force_cleanup(spec.uuid, [own, foreign, kernel, initrd])


@needs_guest
async def test_real_guest_serial_console(real_agent: RunningAgent) -> None:
    spec, kernel, initrd = kernel_guest(uuid.uuid4().hex[:8], disks=[DiskSpec(size_gib=0.0625)])
    name = spec.name
    volume = POOL_PATH / f"{name}-{spec.uuid.hex[:8]}-disk0.qcow2"
    try:
        async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
            info = await client.define(spec)
            assert info.state == "shutoff" and info.disks[0].path == str(volume)
            assert volume.exists()
            with pytest.raises(AgentConflict):  # no serial console while shut off
                async with client.open_serial(spec.uuid):
                    pass
            async with client.events() as events:
                await next_event(events)  # inventory
                started = await client.start(spec.uuid)
                assert started.state == "running"
                async with client.open_serial(spec.uuid) as serial:
                    await _read_until(serial, b"DOMUS-TEST-GUEST READY", timeout=180)
                    await serial.send_bytes(b"echo hello-$((6*7))\n")
                    await _read_until(serial, b"hello-42", timeout=60)
                    # A break, then a key: Linux reads them as Magic SysRq (h: its help).
                    await serial.send_str('{"type": "break"}')
                    await serial.send_bytes(b"h")
                    await _read_until(serial, b"sysrq: HELP", timeout=30)
                    assert isinstance(await wait_for_domain_event(events, spec.uuid, "started"), DomainEvent)
                    stopped = await client.destroy(spec.uuid)
                    assert stopped.state == "shutoff"
                    # The agent closes the console with a reason once the domain stops.
                    async with asyncio.timeout(30):
                        while (await serial.receive()).type not in (
                            aiohttp.WSMsgType.CLOSE,
                            aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED,
                        ):
                            pass
                    assert serial.closed or serial.close_code is not None
            result = await client.delete(spec.uuid, delete_disks=True)
            assert result.deleted_volumes == [str(volume)] and result.kept_volumes == []
            assert not volume.exists()
            assert kernel.exists() and initrd.exists()  # boot files are never deleted
            assert spec.uuid not in {d.uuid for d in await client.list_domains()}
        listed = subprocess.run(
            ["virsh", "-c", URI, "list", "--all", "--name"], capture_output=True, text=True
        ).stdout
        assert name not in listed
    finally:
        _force_cleanup(spec.uuid, [volume, kernel, initrd])


async def _closed_with_reason(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> str:
    """Read (discarding output) until the agent closes `ws`; returns the close reason."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                continue
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            assert msg.data == aiohttp.WSCloseCode.GOING_AWAY, msg
            return str(msg.extra or "")


@needs_guest
async def test_real_guest_serial_console_is_shared(real_agent: RunningAgent) -> None:
    """Two viewers share one console stream (neither kicks the other off); after both leave a
    third opens a fresh one; destroying the domain closes every viewer with a reason."""
    spec, kernel, initrd = kernel_guest(f"shared-{uuid.uuid4().hex[:8]}")
    try:
        async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
            await client.define(spec)
            assert (await client.start(spec.uuid)).state == "running"
            async with client.open_serial(spec.uuid) as first:
                await _read_until(first, b"DOMUS-TEST-GUEST READY", timeout=180)
                async with client.open_serial(spec.uuid) as second:
                    # The second viewer joined: the first is still attached and typing works.
                    await first.send_bytes(b"echo shared-$((6*7))\n")
                    await _read_until(first, b"shared-42", timeout=60)
                    await _read_until(second, b"shared-42", timeout=60)
                    # The second viewer takes control (one types at a time); its input then
                    # reaches the same console, seen by both.
                    await second.send_str(json.dumps({"type": "take-control"}))
                    await second.send_bytes(b"echo second-$((5*5))\n")
                    await _read_until(second, b"second-25", timeout=60)
                    await _read_until(first, b"second-25", timeout=60)
                    assert not first.closed and not second.closed
                # The second one leaving does not end the first one's session; control is taken
                # back explicitly.
                await first.send_str(json.dumps({"type": "take-control"}))
                await first.send_bytes(b"echo still-$((7*7))\n")
                await _read_until(first, b"still-49", timeout=60)
            # Both left; the agent still records the console, and a third viewer joins it.
            async with client.open_serial(spec.uuid) as third, client.open_serial(spec.uuid) as fourth:
                await third.send_bytes(b"echo third-$((3*3))\n")
                await _read_until(third, b"third-9", timeout=60)
                await _read_until(fourth, b"third-9", timeout=60)
                assert (await client.destroy(spec.uuid)).state == "shutoff"
                reasons = [await _closed_with_reason(ws, timeout=30) for ws in (third, fourth)]
            print("close reasons:", reasons)
            for reason in reasons:
                assert reason.startswith(("domain stopped", "console stream")), reasons
            with pytest.raises(AgentConflict):  # and no new session once it is shut off
                async with client.open_serial(spec.uuid):
                    pass
            await client.delete(spec.uuid, delete_disks=True)
    finally:
        _force_cleanup(spec.uuid, [kernel, initrd])
    log = real_agent.log()
    assert f"recording the serial console of {spec.uuid}" in log
    assert f"serial console session of {spec.uuid} closed: last viewer left" not in log
    assert log.count(f"serial console session of {spec.uuid} closed") == 1  # one stream in all


@needs_guest
async def test_a_late_viewer_sees_what_the_guest_printed_before(real_agent: RunningAgent) -> None:
    """The agent records each running domain's console from its start: a viewer who comes after
    the boot sees the boot messages first; the log of the last run stays readable once stopped."""
    spec, kernel, initrd = kernel_guest(f"history-{uuid.uuid4().hex[:6]}")
    log_url = f"{real_agent.url}/v1/domains/{spec.uuid}/console/serial/log"
    headers = {"Authorization": f"Bearer {real_agent.secret}"}

    async def history(session: aiohttp.ClientSession) -> bytes:
        async with session.get(log_url, headers=headers) as response:
            assert response.status == 200
            return await response.read()

    try:
        async with (
            AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client,
            aiohttp.ClientSession() as http,
        ):
            await client.define(spec)
            await client.start(spec.uuid)
            async with asyncio.timeout(SLOW):  # nobody watches while it boots
                while b"DOMUS-TEST-GUEST READY" not in await history(http):
                    await asyncio.sleep(0.5)
            async with client.open_serial(spec.uuid) as late:
                first = await _read_until(late, b"DOMUS-TEST-GUEST READY", timeout=10)
            assert b"Linux version" in first or b"DOMUS-TEST-GUEST READY" in first
            await client.destroy(spec.uuid)
            async with asyncio.timeout(30):  # the last run's log outlives it
                while b"DOMUS-TEST-GUEST READY" not in await history(http):
                    await asyncio.sleep(0.2)
            await client.delete(spec.uuid, delete_disks=True)
    finally:
        _force_cleanup(spec.uuid, [kernel, initrd])


async def _screen(viewer: VncOverWebSocket, width: int, height: int) -> bytes:
    """One whole frame, asked for in raw encoding (32 bits per pixel, as QEMU's ServerInit says)."""
    await viewer.ws.send_bytes(update_request(width, height))
    kind = (await viewer.read(1))[0]
    assert kind == 0, f"server message {kind}"  # FramebufferUpdate
    (rects,) = struct.unpack(">xH", await viewer.read(3))
    pixels = b""
    for _ in range(rects):
        _x, _y, w, h, encoding = struct.unpack(">HHHHi", await viewer.read(12))
        assert encoding == 0, encoding
        pixels += await viewer.read(w * h * 4)
    return pixels


@needs_guest
async def test_a_real_guest_s_screen_through_the_agent(real_agent: RunningAgent) -> None:
    """QEMU's VNC server reached through libvirt (no port), shared, and what it shows is drawn."""
    spec, kernel, initrd = kernel_guest(f"vnc-{uuid.uuid4().hex[:6]}")
    spec = spec.model_copy(update={"graphics": True})
    try:
        async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
            await client.define(spec)
            with pytest.raises(AgentConflict, match="needs it running"):
                async with client.open_console(spec.uuid, kind="vnc"):
                    pass
            await client.start(spec.uuid)
            async with client.open_console(spec.uuid, kind="vnc", user="ana") as ws:
                viewer = VncOverWebSocket(ws)
                server_init = await viewer.handshake()
                width, height = struct.unpack(">HH", server_init[:4])
                assert server_init[4] == 32 and server_init.endswith(spec.name.encode() + b")")
                await ws.send_bytes(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw only
                async with asyncio.timeout(60):  # the BIOS, then the kernel, write on the screen
                    while not any(await _screen(viewer, width, height)):
                        await asyncio.sleep(0.5)
                await client.destroy(spec.uuid)
                assert "the VNC server closed the console" in await viewer.closed(timeout=30)
            await client.delete(spec.uuid, delete_disks=True)
    finally:
        _force_cleanup(spec.uuid, [kernel, initrd])


async def test_probe_guest_boots_under_tcg(real_agent: RunningAgent) -> None:
    """The accel probe's boot sector really runs (here under TCG) and is cleaned up."""
    from agent.accel import time_probe_guest

    before = set(POOL_PATH.glob(".domus-accel-probe-*"))  # another agent may be probing now
    conn = libvirt.open(URI)
    try:
        seconds = await asyncio.to_thread(time_probe_guest, conn, "qemu", str(POOL_PATH))
        assert seconds is not None and seconds < 10
    finally:
        conn.close()
    assert not set(POOL_PATH.glob(".domus-accel-probe-*")) - before


async def test_a_transient_domain_is_gone_once_stopped(real_agent: RunningAgent) -> None:
    """A transient domain (as the accel probe makes) must not linger as 'shut off' for the console."""
    name = f"{PREFIX}transient-{uuid.uuid4().hex[:6]}"
    xml = f"<domain type='qemu'><name>{name}</name><memory>16384</memory><os><type>hvm</type></os></domain>"
    async with AgentClient(real_agent.url, real_agent.secret) as client, client.events() as ws:
        await next_event(ws)  # the inventory
        conn = libvirt.open(URI)
        try:
            dom = await asyncio.to_thread(conn.createXML, xml, 0)
            dom_uuid = uuid.UUID(dom.UUIDString())
            await asyncio.to_thread(dom.destroy)
        finally:
            conn.close()
        started = await asyncio.wait_for(wait_for_domain_event(ws, dom_uuid, "started"), SLOW)
        assert started.state == "running"
        stopped = await asyncio.wait_for(wait_for_domain_event(ws, dom_uuid, "stopped"), SLOW)
        assert stopped.state is None


async def test_stale_probe_guests_are_cleaned(tmp_path: Path) -> None:
    """An agent killed mid-probe leaves a running probe guest; the next probe destroys it, but
    leaves alone a live probe (fresh image file) that another agent may be running."""
    from agent.accel import clean_stale_probes

    conn = libvirt.open(URI)
    names = [f"domus-accel-probe-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        for name in names:
            xml = f"<domain type='qemu'><name>{name}</name><memory>16384</memory><os><type>hvm</type></os></domain>"
            await asyncio.to_thread(conn.createXML, xml, 0)
        (tmp_path / f".{names[1]}.img").write_bytes(b"live")
        await asyncio.to_thread(clean_stale_probes, conn, str(tmp_path))
        running = {d.name() for d in conn.listAllDomains()}
        assert names[0] not in running
        assert names[1] in running
    finally:
        for name in names:
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(name).destroy()
        conn.close()
