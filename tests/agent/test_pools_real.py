"""Storage pools against the host's real libvirt (qemu:///system), through the agent's API: a
`dir` pool in a temporary directory through its whole life, the refusals while a domain uses
it, and pools changed with virsh behind the agent's back reaching its events socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import pytest
from lxml import etree
from pydantic import TypeAdapter

from agent.client import AgentClient, AgentConflict, AgentError, AgentInvalid
from agent.protocol import (
    POOL_TYPES,
    AgentEvent,
    HostResources,
    InventoryEvent,
    PoolInfo,
    PoolSpec,
    StatsEvent,
)
from tests.agent.conftest import REPO, RunningAgent, launch_agent, stop_agent
from tests.agent.test_real_libvirt import _libvirt_available

URI = "qemu:///system"
POOL_PATH = Path("/var/lib/libvirt/images")  # the agent's default pool, as the other real tests use
PREFIX = "domus-test-pool-"
SLOW = 300.0
EVENT = TypeAdapter(AgentEvent)
PUBLISHED = "published fresh resources after storage pool changes"  # the agent's log, per publication


pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.asyncio,
    pytest.mark.skipif(not _libvirt_available(), reason=f"`virsh -c {URI} version` fails"),
]


@pytest.fixture(scope="module")
def real_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    log = tmp_path_factory.mktemp("real-pools-agent") / "agent.log"
    agent = launch_agent(uri=URI, pool_dir=POOL_PATH, log_path=log, accel="tcg", ready_timeout=SLOW)
    try:
        yield agent
    finally:
        stop_agent(agent)


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # "not found" is expected here
    connection = libvirt.open(URI)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory QEMU (another user) can reach, unlike pytest's 0700 tmp_path."""
    base = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/var/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pool_name(conn: libvirt.virConnect) -> Iterator[str]:
    """A fresh pool name; whatever a test leaves under it is removed from libvirt."""
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            pool = conn.storagePoolLookupByName(name)
            with contextlib.suppress(libvirt.libvirtError):
                pool.destroy()
            pool.undefine()


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=True).stdout


async def test_a_dir_pool_through_its_life(
    real_agent: RunningAgent, conn: libvirt.virConnect, scratch: Path, pool_name: str
) -> None:
    directory = scratch / "pool"
    spec = PoolSpec(name=pool_name, type="dir", target_path=str(directory), build=True)
    async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
        defined = await client.define_pool(spec)
        assert (
            defined.detail
            == f"storage pool {pool_name!r}: defined, built, started, set to start with the host"
        )
        assert directory.is_dir()  # built
        pool = defined.pool
        assert pool is not None
        assert (pool.type, pool.state, pool.active, pool.autostart, pool.persistent) == (
            "dir",
            "running",
            True,
            True,
            True,
        )
        assert (pool.path, pool.volume_count, pool.source) == (str(directory), 0, "")
        assert pool.capacity_bytes > 0
        assert conn.storagePoolLookupByName(pool_name).autostart() == 1  # libvirt agrees

        # Retried (a job whose worker died): the same pool, as it is.
        again = await client.define_pool(spec)
        assert again.detail == f"storage pool {pool_name!r} is already defined" and again.pool == pool
        with pytest.raises(AgentConflict) as info:
            await client.define_pool(spec.model_copy(update={"target_path": str(scratch / "other")}))
        assert info.value.detail == (
            f"storage pool {pool_name!r} already exists with another definition "
            f"(target path {directory}, not {scratch / 'other'})"
        )

        stopped = await client.pool_action(pool_name, "stop")
        assert stopped.pool is not None and (stopped.pool.state, stopped.pool.active) == ("inactive", False)
        assert not conn.storagePoolLookupByName(pool_name).isActive()
        started = await client.pool_action(pool_name, "start")
        assert started.pool is not None and started.pool.state == "running"

        # An image copied in by hand is a volume once the pool is refreshed.
        (directory / "copied.qcow2").write_bytes(b"\0" * 4096)
        refreshed = await client.pool_action(pool_name, "refresh")
        assert refreshed.pool is not None and refreshed.pool.volume_count == 1
        assert [(v.name, v.kind) for v in refreshed.pool.volumes] == [("copied.qcow2", "image")]

        off = await client.set_pool_autostart(pool_name, False)
        assert off.pool is not None and off.pool.autostart is False
        assert conn.storagePoolLookupByName(pool_name).autostart() == 0

        with pytest.raises(AgentConflict, match=r"still holds 1 volume\(s\)"):
            await client.delete_pool(pool_name, delete_storage=True)
        assert directory.is_dir() and conn.storagePoolLookupByName(pool_name).isActive()  # untouched
        (directory / "copied.qcow2").unlink()
        deleted = await client.delete_pool(pool_name, delete_storage=True)
        assert deleted.pool is None
        assert deleted.detail == f"storage pool {pool_name!r}: stopped, storage deleted, undefined"
    assert not directory.exists()
    with pytest.raises(libvirt.libvirtError):
        conn.storagePoolLookupByName(pool_name)


async def test_storage_that_cannot_be_deleted_leaves_the_pool_defined(
    real_agent: RunningAgent, conn: libvirt.virConnect, scratch: Path, pool_name: str
) -> None:
    """Stopped, its volumes cannot be counted: libvirt's refusal to remove a directory that is
    not empty is the answer, and the pool stays defined for another try."""
    directory = scratch / "pool"
    spec = PoolSpec(name=pool_name, type="dir", target_path=str(directory), build=True, start=False)
    async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
        defined = await client.define_pool(spec)
        assert defined.pool is not None and (defined.pool.state, defined.pool.volume_count) == (
            "inactive",
            None,
        )
        (directory / "left.iso").write_bytes(b"\0" * 2048)
        with pytest.raises(AgentConflict) as info:
            await client.delete_pool(pool_name, delete_storage=True)
        assert info.value.detail.startswith(
            f"the storage of storage pool {pool_name!r} could not be deleted ("
        )
        assert info.value.detail.endswith("): the pool is stopped and still defined")
        assert conn.storagePoolLookupByName(pool_name).isPersistent()
        (directory / "left.iso").unlink()
        assert (await client.delete_pool(pool_name, delete_storage=True)).detail == (
            f"storage pool {pool_name!r}: storage deleted, undefined"
        )
    assert not directory.exists()


async def test_a_pool_that_cannot_start_is_not_left_defined(
    real_agent: RunningAgent, conn: libvirt.virConnect, scratch: Path, pool_name: str
) -> None:
    """Asked to start without being built, a directory that is not there: the define is taken
    back (a retry starts afresh), and the answer says which step failed."""
    spec = PoolSpec(name=pool_name, type="dir", target_path=str(scratch / "absent"), build=False)
    async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
        with pytest.raises(AgentError) as info:
            await client.define_pool(spec)
        assert info.value.detail.startswith(
            f"storage pool {pool_name!r} was not defined: starting it failed: "
        )
        assert str(scratch / "absent") in info.value.detail
        with pytest.raises(libvirt.libvirtError):
            conn.storagePoolLookupByName(pool_name)
        retried = await client.define_pool(spec.model_copy(update={"build": True}))
        assert retried.pool is not None and retried.pool.state == "running"
        await client.delete_pool(pool_name, delete_storage=True)


@pytest.fixture
def loop_device(scratch: Path) -> Iterator[str]:
    """A real block device: a loop device over a 64 MiB file (nothing of the host's own disks)."""
    image = scratch / "device.img"
    with image.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    made = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"no loop device: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)


async def test_an_fs_pool_on_a_real_block_device(
    real_agent: RunningAgent, conn: libvirt.virConnect, scratch: Path, loop_device: str, pool_name: str
) -> None:
    """build makes the file system, start mounts it; a second build never writes over it."""
    mount = scratch / "mnt"
    spec = PoolSpec(
        name=pool_name,
        type="fs",
        source_devices=[loop_device],
        target_path=str(mount),
        source_format="ext4",
        build=True,
        autostart=False,
    )
    async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
        defined = await client.define_pool(spec)
        pool = defined.pool
        assert pool is not None and (pool.type, pool.state, pool.source) == ("fs", "running", loop_device)
        assert os.path.ismount(mount) and pool.capacity_bytes > 0
        (mount / "kept.img").write_bytes(b"data")
        stopped = await client.pool_action(pool_name, "stop")
        assert stopped.pool is not None and stopped.pool.state == "inactive" and not os.path.ismount(mount)
        await client.delete_pool(pool_name)  # its file system stays on the device

        with pytest.raises(AgentConflict) as info:
            await client.define_pool(spec)  # build again: the device holds a file system now
        assert info.value.detail.startswith(
            f"build: storage pool {pool_name!r} was not built, as its devices"
        )
        assert info.value.detail.endswith("define it without build to use what is there")
        with pytest.raises(libvirt.libvirtError):  # the refused define was taken back
            conn.storagePoolLookupByName(pool_name)

        used = await client.define_pool(spec.model_copy(update={"build": False}))
        assert used.pool is not None and used.pool.volume_count == 2  # lost+found and kept.img
        assert [v.name for v in used.pool.volumes] == ["kept.img"]  # what was there, untouched
        # Its storage is the mount point: deleting it unmounts and removes that, not the data.
        deleted = await client.delete_pool(pool_name, delete_storage=True)
        assert deleted.detail == f"storage pool {pool_name!r}: stopped, storage deleted, undefined"
    assert not os.path.ismount(mount) and not mount.exists()
    mount.mkdir()
    subprocess.run(["mount", "-o", "ro", loop_device, str(mount)], check=True)
    try:
        assert (mount / "kept.img").read_bytes() == b"data"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _domain_xml(name: str, disk: etree._Element) -> str:
    root = etree.Element("domain", type="qemu")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "memory", unit="MiB").text = "16"
    os_el = etree.SubElement(root, "os")
    etree.SubElement(os_el, "type").text = "hvm"
    devices = etree.SubElement(root, "devices")
    devices.append(disk)
    return etree.tostring(root, encoding="unicode")


def _file_disk(path: Path) -> etree._Element:
    disk = etree.Element("disk", type="file", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type="raw")
    etree.SubElement(disk, "source", file=str(path))
    etree.SubElement(disk, "target", dev="vda", bus="virtio")
    return disk


def _volume_disk(pool: str, volume: str) -> etree._Element:
    disk = etree.Element("disk", type="volume", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type="raw")
    etree.SubElement(disk, "source", pool=pool, volume=volume)
    etree.SubElement(disk, "target", dev="vda", bus="virtio")
    return disk


async def test_a_pool_in_use_by_domains_is_not_stopped_or_deleted(
    real_agent: RunningAgent, conn: libvirt.virConnect, scratch: Path, pool_name: str
) -> None:
    directory = scratch / "pool"
    stamp = uuid.uuid4().hex[:6]
    runner, sleeper = f"{PREFIX}run-{stamp}", f"{PREFIX}def-{stamp}"
    domains: list[libvirt.virDomain] = []
    async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
        try:
            await client.define_pool(
                PoolSpec(name=pool_name, type="dir", target_path=str(directory), build=True)
            )
            for image in ("run.img", "def.img"):
                (directory / image).write_bytes(b"\0" * 1024 * 1024)
            await client.pool_action(pool_name, "refresh")
            # Defined, not running, its disk named by pool and volume.
            domains.append(conn.defineXML(_domain_xml(sleeper, _volume_disk(pool_name, "def.img"))))
            # Running (in its firmware: the disk boots nothing), its disk named by path.
            domains.append(
                await asyncio.to_thread(
                    conn.createXML, _domain_xml(runner, _file_disk(directory / "run.img")), 0
                )
            )

            with pytest.raises(AgentConflict) as info:
                await client.pool_action(pool_name, "stop")
            assert info.value.detail == (
                f"storage pool {pool_name!r} is used by {runner}: shut them off before stopping it"
            )
            with pytest.raises(AgentConflict) as info:
                await client.delete_pool(pool_name, delete_storage=True)
            assert info.value.detail == (
                f"storage pool {pool_name!r} is used by {sleeper}, {runner}: "
                "delete those domains, or their disks in it, first"
            )
            assert conn.storagePoolLookupByName(pool_name).isActive()  # refusals change nothing

            await asyncio.to_thread(domains.pop().destroy)  # transient: gone once stopped
            stopped = await client.pool_action(pool_name, "stop")  # only a defined one uses it now
            assert stopped.pool is not None and stopped.pool.state == "inactive"
            with pytest.raises(AgentConflict, match=f"is used by {sleeper}:"):
                await client.delete_pool(pool_name)
            domains.pop().undefine()
            deleted = await client.delete_pool(pool_name)  # its files stay: no delete_storage
            assert deleted.pool is None and (directory / "run.img").exists()
        finally:
            for dom in domains:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()


async def test_a_type_this_libvirt_cannot_run_is_refused(
    real_agent: RunningAgent, conn: libvirt.virConnect
) -> None:
    caps = etree.fromstring(conn.getStoragePoolCapabilities(0).encode())
    supported = [t for t in POOL_TYPES if caps.find(f"pool[@type='{t}'][@supported='yes']") is not None]
    missing = [t for t in POOL_TYPES if t not in supported]
    if not missing:
        pytest.skip("this host's libvirt runs every pool type Domus defines")
    kind = missing[0]
    data: dict[str, Any] = {
        "zfs": {"source_name": "tank"},
        "gluster": {"source_host": "gluster.example.com", "source_name": "gv0"},
        "iscsi": {"source_host": "san.example.com", "source_name": "iqn.2013-06.com.example:vms"},
        "scsi": {"adapter": "host0"},
        "logical": {"source_name": "vg0"},
        "disk": {"source_devices": ["/dev/sdz"]},
        "fs": {"source_devices": ["/dev/sdz1"], "target_path": "/mnt/x"},
        "netfs": {"source_host": "nfs.example.com", "source_dir": "/e", "target_path": "/mnt/x"},
    }[kind]
    spec = PoolSpec.model_validate({"name": f"{PREFIX}{kind}", "type": kind, **data})
    async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client:
        with pytest.raises(AgentInvalid) as info:
            await client.define_pool(spec)
        host = await client.host()
    assert info.value.detail == (
        f"type: this host's libvirt cannot run storage pools of type {kind} (it can run {', '.join(supported)})"
    )
    assert host.resources is not None and host.resources.pool_types == supported


async def _stats_until(
    ws: aiohttp.ClientWebSocketResponse, wanted: Callable[[HostResources], bool]
) -> StatsEvent:
    """The first StatsEvent whose resources satisfy `wanted` (a guard of 60 s against a hang)."""
    async with asyncio.timeout(60):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            event = EVENT.validate_python(json.loads(msg.data))
            if isinstance(event, StatsEvent) and event.resources is not None and wanted(event.resources):
                return event


def _pool(resources: HostResources, name: str) -> PoolInfo | None:
    return next((p for p in resources.pools if p.name == name), None)


async def test_pools_changed_behind_the_agents_back_reach_its_events(
    real_agent: RunningAgent, scratch: Path, pool_name: str
) -> None:
    """virsh defines, builds and starts a pool: libvirt's events make the agent publish fresh
    resources (it says so in its log), not its periodic stats."""
    directory = scratch / "pool"
    async with AgentClient(real_agent.url, real_agent.secret, timeout=SLOW) as client, client.events() as ws:
        msg = await asyncio.wait_for(ws.receive(), timeout=SLOW)
        inventory = EVENT.validate_python(json.loads(msg.data))
        assert isinstance(inventory, InventoryEvent) and inventory.host.resources is not None
        assert _pool(inventory.host.resources, pool_name) is None
        published = real_agent.log().count(PUBLISHED)

        virsh("pool-define-as", pool_name, "dir", "--target", str(directory))
        virsh("pool-build", pool_name)
        virsh("pool-start", pool_name)
        started = time.monotonic()
        event = await _stats_until(ws, lambda r: getattr(_pool(r, pool_name), "state", "") == "running")
        print(f"pool started with virsh: in a StatsEvent after {time.monotonic() - started:.2f}s")
        seen = _pool(event.resources, pool_name)  # type: ignore[arg-type]
        assert seen is not None and (seen.path, seen.volume_count, seen.autostart) == (
            str(directory),
            0,
            False,
        )
        log = real_agent.log()
        for what in ("defined", "built", "started"):
            assert f"storage pool {pool_name} {what}" in log  # heard from libvirt
        await real_agent.log_count_exceeds(PUBLISHED, published)  # and answered with fresh resources

        # A file copied in, then `virsh pool-refresh`: only a refresh event, and it counts.
        (directory / "by-hand.iso").write_bytes(b"\0" * 2048)
        virsh("pool-refresh", pool_name)
        event = await _stats_until(ws, lambda r: getattr(_pool(r, pool_name), "volume_count", 0) == 1)
        assert [v.name for v in _pool(event.resources, pool_name).volumes] == ["by-hand.iso"]  # type: ignore[union-attr, arg-type]

        published = real_agent.log().count(PUBLISHED)
        virsh("pool-destroy", pool_name)
        virsh("pool-undefine", pool_name)
        await _stats_until(ws, lambda r: _pool(r, pool_name) is None)
        log = real_agent.log()
        assert f"storage pool {pool_name} stopped" in log and f"storage pool {pool_name} undefined" in log
        await real_agent.log_count_exceeds(PUBLISHED, published)


async def test_a_new_connection_hears_pool_events_and_the_old_one_is_let_go(
    scratch: Path, pool_name: str
) -> None:
    """As when libvirtd restarts: the agent's connection is dropped and made again. The new one
    registers its domain, pool and network callbacks; the old one's are deregistered (a registered
    callback keeps a closed connection alive), and pool events keep coming, once each."""
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.agent.reconnect_probe", pool_name, str(scratch / "pool")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SLOW,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Domain lifecycle, 3 device events and the guest agent's; pool lifecycle and refresh;
    # network lifecycle.
    registered = ["domain"] * 5 + ["pool"] * 2 + ["network"]
    assert result == {
        "registered_before": registered,
        "old_domain_callbacks": 0,
        "old_pool_callbacks": 0,
        "old_network_callbacks": 0,
        "registered_after": registered,
        "stale_registrations": 0,
        "heard": [False, False],  # defined, undefined: lifecycle events, not refreshes
    }
    assert "Traceback" not in out.stderr
