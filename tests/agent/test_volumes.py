"""The volumes of a storage pool, through the agent's HTTP API and its client, on the host's real
libvirt (qemu:///system): each test gets a dir pool of its own in a temporary directory.

Also, without a daemon: what a volume's name and format make it, the HTTP Range header, and a
download that fails after it began.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import libvirt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree
from multidict import CIMultiDictProxy
from pydantic import ValidationError

from agent import api
from agent.client import AgentClient, AgentConflict, AgentError, AgentInvalid, AgentNotFound
from agent.errors import LibvirtFailure
from agent.protocol import DiskSpec, StatsEvent, VolumeCreateRequest, VolumeDetail
from agent.runtime import AgentRuntime
from agent.volumes import RangeNotSatisfiable, StreamDownload, byte_range, volume_kind
from tests.agent.conftest import RunningAgent, launch_agent, stop_agent
from tests.agent.test_events import next_event
from tests.agent.test_real_libvirt import (
    POOL_PATH,
    PREFIX,
    SLOW,
    URI,
    _force_cleanup,
    _libvirt_available,
    kernel_guest,
    needs_guest,
)

MIB = 1024 * 1024
needs_libvirt = pytest.mark.skipif(not _libvirt_available(), reason=f"`virsh -c {URI} version` fails")


# -- without a daemon --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "fmt", "vol_type", "kind"),
    [
        ("debian-12-netinst.iso", "raw", "file", "iso"),
        ("installer", "iso", "file", "iso"),
        ("web1-0a1b2c3d-disk0.qcow2", "qcow2", "file", "disk"),
        ("web1-0a1b2c3d-disk1.img", "raw", "file", "disk"),
        ("scratch", "qcow2", "file", "disk"),
        ("web1-0a1b2c3d-disk0", "", "block", "disk"),  # a logical volume
        ("debian-12-genericcloud-amd64.qcow2", "qcow2", "file", "cloud-image"),
        ("Fedora-Cloud-Base-40-1.14.x86_64.qcow2", "qcow2", "file", "cloud-image"),
        ("jammy-server-cloudimg-amd64.img", "qcow2", "file", "cloud-image"),
        ("vmlinuz", "raw", "file", "other"),
        ("cloud-init-notes.txt", "raw", "file", "other"),
        ("subdir", "", "dir", "other"),
    ],
)
def test_what_a_volume_is_for(name: str, fmt: str, vol_type: str, kind: str) -> None:
    assert volume_kind(name, fmt, vol_type) == kind


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-99", (0, 100)),
        ("bytes=100-", (100, 900)),
        ("bytes=900-5000", (900, 100)),  # clipped to the end
        ("bytes=-10", (990, 10)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=0-0", (0, 1)),
        ("bytes=5-1", None),  # invalid: ignored, the whole is sent
        ("bytes=0-1,5-6", None),  # several ranges: the whole
        ("items=0-1", None),
        ("bytes=-", None),
        ("bytes=+1-2", None),
        ("bytes=1-" + "9" * 5000, None),  # not a number worth parsing
    ],
)
def test_byte_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-2000", "bytes=-0"])
def test_a_range_past_the_end_is_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 1000)


class _FailingDownload:
    """Sends one chunk, then fails as a libvirt stream would."""

    name = "broken.img"
    size = 3 * MIB
    etag = None
    last_modified = None
    closed = False

    async def chunks(self, start: int, length: int) -> AsyncIterator[bytes]:
        yield b"x" * MIB
        raise LibvirtFailure("reading volume 'broken.img': stream aborted")

    async def close(self) -> None:
        self.closed = True


async def test_a_download_that_fails_after_it_began_is_cut_short() -> None:
    """The status line and Content-Length are out: the client must see a short body (an error),
    never a complete-looking one."""
    download = _FailingDownload()

    class Volumes:
        async def open_download(self, pool: str, name: str) -> _FailingDownload:
            return download

    app = web.Application(middlewares=[api.problems])
    app[api.RUNTIME] = cast(AgentRuntime, type("Runtime", (), {"volumes": Volumes()})())
    app.router.add_get("/v1/pools/{name}/volumes/{volume}/download", api.download_volume)
    async with TestClient(TestServer(app)) as http:
        resp = await http.get("/v1/pools/p/volumes/broken.img/download")
        assert resp.status == 200 and resp.content_length == 3 * MIB
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert download.closed


# -- on the host's libvirt -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    log = tmp_path_factory.mktemp("volumes-agent") / "agent.log"
    running = launch_agent(uri=URI, pool_dir=POOL_PATH, log_path=log, accel="tcg", ready_timeout=SLOW)
    try:
        yield running
    finally:
        stop_agent(running)


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    connection = libvirt.open(URI)
    try:
        yield connection
    finally:
        connection.close()


class Pool:
    def __init__(self, name: str, path: Path, pool: libvirt.virStoragePool) -> None:
        self.name, self.path, self.pool = name, path, pool


@pytest.fixture
def pool(conn: libvirt.virConnect, tmp_path: Path) -> Iterator[Pool]:
    """A dir pool of its own in a temporary directory, defined and started here."""
    name = f"{PREFIX}vol-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "pool"
    path.mkdir()
    root = etree.Element("pool", type="dir")
    etree.SubElement(root, "name").text = name
    etree.SubElement(etree.SubElement(root, "target"), "path").text = str(path)
    defined = conn.storagePoolDefineXML(etree.tostring(root, encoding="unicode"), 0)
    defined.create(0)
    try:
        yield Pool(name, path, defined)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            defined.refresh(0)
            for vol in defined.listAllVolumes(0):
                with contextlib.suppress(libvirt.libvirtError):
                    vol.delete(0)
        with contextlib.suppress(libvirt.libvirtError):
            defined.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            defined.undefine()


def client(agent: RunningAgent) -> AgentClient:
    return AgentClient(agent.url, agent.secret, timeout=SLOW)


def new(name: str, mib: int, fmt: str = "raw", allocation: str = "sparse") -> VolumeCreateRequest:
    return VolumeCreateRequest.model_validate(
        {"name": name, "capacity_bytes": mib * MIB, "format": fmt, "allocation": allocation}
    )


def iso_bytes() -> bytes:
    """Enough of an ISO 9660 image for libvirt to recognise one (its volume descriptor)."""
    return b"\0" * 32768 + b"\x01CD001\x01" + b"\0" * (2048 - 7) + b"\xffCD001\x01" + b"\0" * 2041


@contextlib.contextmanager
def shut_off_domain(conn: libvirt.virConnect, path: Path, *, device: str = "disk") -> Iterator[str]:
    """A defined (never started) domain with `path` as its disk or CD-ROM; undefined after."""
    name = f"{PREFIX}vol-user-{uuid.uuid4().hex[:6]}"
    root = etree.Element("domain", type="qemu")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "memory", unit="MiB").text = "64"
    etree.SubElement(etree.SubElement(root, "os"), "type", arch="x86_64").text = "hvm"
    devices = etree.SubElement(root, "devices")
    disk = etree.SubElement(devices, "disk", type="file", device=device)
    etree.SubElement(disk, "driver", name="qemu", type="raw")
    etree.SubElement(disk, "source", file=str(path))
    if device == "cdrom":
        etree.SubElement(disk, "target", dev="sda", bus="sata")
        etree.SubElement(disk, "readonly")
    else:
        etree.SubElement(disk, "target", dev="vda", bus="virtio")
    dom = conn.defineXML(etree.tostring(root, encoding="unicode"))
    try:
        yield name
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


async def download(
    agent_client: AgentClient, pool: str, name: str, **kwargs: Any
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with agent_client.download_volume(pool, name, **kwargs) as resp:
        body = b"".join([chunk async for chunk in resp.content.iter_chunked(MIB)])
        return resp.status, resp.headers, body


@pytest.mark.libvirt
@needs_libvirt
async def test_create_sparse_and_preallocated_volumes(agent: RunningAgent, pool: Pool) -> None:
    async with client(agent) as api_client, api_client.events() as events:
        assert (await next_event(events)).type == "inventory"
        made: dict[str, VolumeDetail] = {}
        for fmt in ("qcow2", "raw"):
            for allocation in ("sparse", "preallocated"):
                result = await api_client.create_volume(
                    pool.name, new(f"{allocation}.{fmt}", 16, fmt, allocation)
                )
                assert result.volume is not None and allocation in result.detail
                made[f"{allocation}.{fmt}"] = result.volume
        # The host's fresh resources follow the operations, with the pool's new volume count.
        async with asyncio.timeout(15):
            while True:
                event = await next_event(events)
                if isinstance(event, StatsEvent) and event.resources is not None:
                    counts = {p.name: p.volume_count for p in event.resources.pools}
                    if counts.get(pool.name) == 4:
                        break

        for volume in made.values():
            assert volume.capacity_bytes == 16 * MIB and volume.path == str(pool.path / volume.name)
            assert volume.kind == "disk" and volume.backing is None
        assert made["sparse.raw"].format == "raw" and made["sparse.raw"].allocation_bytes == 0
        assert made["sparse.qcow2"].format == "qcow2" and made["sparse.qcow2"].allocation_bytes < MIB
        assert made["preallocated.raw"].allocation_bytes >= 16 * MIB
        assert made["preallocated.qcow2"].allocation_bytes >= 16 * MIB
        assert os.stat(pool.path / "preallocated.raw").st_blocks * 512 >= 16 * MIB
        assert os.stat(pool.path / "sparse.raw").st_blocks == 0

        # Asked again (a retry): answered with the volume as it is. Another size: a conflict.
        again = await api_client.create_volume(pool.name, new("sparse.qcow2", 16, "qcow2"))
        assert again.volume == made["sparse.qcow2"] and "already exists" in again.detail
        with pytest.raises(AgentConflict, match=r"already has a volume 'sparse\.qcow2'"):
            await api_client.create_volume(pool.name, new("sparse.qcow2", 32, "qcow2"))
        with pytest.raises(AgentConflict, match=r"already has a volume 'sparse\.raw'"):
            await api_client.create_volume(pool.name, new("sparse.raw", 16, "qcow2"))

        # A preallocated volume the pool has no room for: refused, with the numbers.
        with pytest.raises(
            AgentInvalid, match=r"capacity_bytes: a preallocated volume needs 1048576 GiB"
        ) as err:
            await api_client.create_volume(pool.name, new("huge", 1024 * 1024 * 1024, "raw", "preallocated"))
        assert " GiB free" in err.value.detail
        assert not (pool.path / "huge").exists()
        with pytest.raises(AgentInvalid, match="name"):
            await api_client._request(
                "POST", f"/v1/pools/{pool.name}/volumes", json={"name": "../x", "capacity_bytes": 1}
            )


@pytest.mark.libvirt
@needs_libvirt
async def test_list_a_page_at_a_time_with_kinds(
    agent: RunningAgent, pool: Pool, conn: libvirt.virConnect
) -> None:
    async with client(agent) as api_client:
        for name in ("b-disk.qcow2", "c-disk.img", "debian-12-genericcloud-amd64.qcow2"):
            await api_client.create_volume(
                pool.name, new(name, 8, "qcow2" if name.endswith("qcow2") else "raw")
            )
        base = pool.path / "debian-12-genericcloud-amd64.qcow2"
        overlay = etree.Element("volume")
        etree.SubElement(overlay, "name").text = "d-overlay.qcow2"
        etree.SubElement(overlay, "capacity", unit="bytes").text = str(8 * MIB)
        etree.SubElement(etree.SubElement(overlay, "target"), "format", type="qcow2")
        store = etree.SubElement(overlay, "backingStore")
        etree.SubElement(store, "path").text = str(base)
        etree.SubElement(store, "format", type="qcow2")
        pool.pool.createXML(etree.tostring(overlay, encoding="unicode"), 0)
        # Copied in by hand: libvirt knows them only once the pool is rescanned (the list does it).
        (pool.path / "a-installer.iso").write_bytes(iso_bytes())
        (pool.path / "e-vmlinuz").write_bytes(b"not really a kernel")
        (pool.path / ".hidden.qcow2").write_bytes(b"")

        listing = await api_client.list_volumes(pool.name)
        assert listing.pool == pool.name and listing.total == 6
        by_name = {v.name: v for v in listing.volumes}
        assert list(by_name) == [
            "a-installer.iso",
            "b-disk.qcow2",
            "c-disk.img",
            "d-overlay.qcow2",
            "debian-12-genericcloud-amd64.qcow2",
            "e-vmlinuz",
        ]
        assert {name: v.kind for name, v in by_name.items()} == {
            "a-installer.iso": "iso",
            "b-disk.qcow2": "disk",
            "c-disk.img": "disk",
            "d-overlay.qcow2": "disk",
            "debian-12-genericcloud-amd64.qcow2": "cloud-image",
            "e-vmlinuz": "other",
        }
        iso = by_name["a-installer.iso"]
        assert iso.format == "iso" and iso.capacity_bytes == len(iso_bytes())
        assert by_name["d-overlay.qcow2"].backing == str(base)
        assert by_name["c-disk.img"].format == "raw" and by_name["c-disk.img"].capacity_bytes == 8 * MIB

        page = await api_client.list_volumes(pool.name, limit=2, offset=1)
        assert page.total == 6 and [v.name for v in page.volumes] == ["b-disk.qcow2", "c-disk.img"]
        tail = await api_client.list_volumes(pool.name, limit=5, offset=4)
        assert [v.name for v in tail.volumes] == ["debian-12-genericcloud-amd64.qcow2", "e-vmlinuz"]
        past = await api_client.list_volumes(pool.name, offset=6)
        assert past.total == 6 and past.volumes == []
        for bad in ({"limit": "0"}, {"limit": "5001"}, {"offset": "-1"}, {"limit": "ten"}):
            with pytest.raises(AgentInvalid):
                await api_client._request("GET", f"/v1/pools/{pool.name}/volumes", params=bad)

        pool.pool.destroy()
        with pytest.raises(AgentConflict, match=f"storage pool '{pool.name}' is not running"):
            await api_client.list_volumes(pool.name)


@pytest.mark.libvirt
@needs_libvirt
async def test_resize_grows_and_refuses_to_shrink(
    agent: RunningAgent, pool: Pool, conn: libvirt.virConnect
) -> None:
    async with client(agent) as api_client:
        await api_client.create_volume(pool.name, new("grow.img", 8))
        await api_client.create_volume(pool.name, new("grow.qcow2", 8, "qcow2"))
        await api_client.create_volume(pool.name, new("full.img", 8, "raw", "preallocated"))

        grown = await api_client.resize_volume(pool.name, "grow.img", 24 * MIB)
        assert grown.volume is not None and grown.volume.capacity_bytes == 24 * MIB
        assert os.path.getsize(pool.path / "grow.img") == 24 * MIB
        assert "grown from 0.01 GiB to 0.02 GiB" in grown.detail and "next boot" not in grown.detail
        grown = await api_client.resize_volume(pool.name, "grow.qcow2", 24 * MIB)
        assert grown.volume is not None and grown.volume.capacity_bytes == 24 * MIB
        # A preallocated raw volume stays preallocated.
        grown = await api_client.resize_volume(pool.name, "full.img", 24 * MIB)
        assert grown.volume is not None and grown.volume.allocation_bytes >= 24 * MIB

        with pytest.raises(AgentInvalid, match="shrinking is refused because it loses the data"):
            await api_client.resize_volume(pool.name, "grow.img", 8 * MIB)
        # The size it has already: a grow done before the agent restarted, asked again, is done.
        same = await api_client.resize_volume(pool.name, "grow.img", 24 * MIB)
        assert same.volume is not None and "is 0.02 GiB already" in same.detail
        assert os.path.getsize(pool.path / "grow.img") == 24 * MIB
        with pytest.raises(AgentInvalid, match=r"capacity_bytes: growing volume 'full\.img' by .* GiB free"):
            await api_client.resize_volume(pool.name, "full.img", 1 << 50)

        # Used by a shut-off domain: it sees the new size when it next boots.
        with shut_off_domain(conn, pool.path / "grow.img") as user:
            grown = await api_client.resize_volume(pool.name, "grow.img", 32 * MIB)
            assert f"{user} sees it at the next boot" in grown.detail


@pytest.mark.libvirt
@needs_libvirt
async def test_clone_copies_the_bytes(agent: RunningAgent, pool: Pool) -> None:
    pattern = os.urandom(3 * MIB + 123)
    async with client(agent) as api_client:
        await api_client.create_volume(pool.name, new("source.img", 8))
        with (pool.path / "source.img").open("r+b") as out:
            out.seek(2 * MIB)
            out.write(pattern)
        await api_client.create_volume(pool.name, new("source.qcow2", 8, "qcow2"))

        copy = await api_client.clone_volume(pool.name, "source.img", "copy.img")
        assert copy.volume is not None and copy.volume.name == "copy.img" and copy.volume.format == "raw"
        assert copy.volume.capacity_bytes == 8 * MIB and "copied to 'copy.img'" in copy.detail
        assert (pool.path / "copy.img").read_bytes() == (pool.path / "source.img").read_bytes()
        copy = await api_client.clone_volume(pool.name, "source.qcow2", "copy.qcow2")
        assert copy.volume is not None and copy.volume.format == "qcow2"

        with pytest.raises(AgentConflict, match=r"already has a volume 'copy\.img'"):
            await api_client.clone_volume(pool.name, "source.qcow2", "copy.img")
        with pytest.raises(AgentNotFound, match=f"no volume 'missing.img' in storage pool '{pool.name}'"):
            await api_client.clone_volume(pool.name, "missing.img", "copy2.img")
        with pytest.raises(ValidationError):  # the client checks the name before asking
            await api_client.clone_volume(pool.name, "source.img", "../escape.img")
        with pytest.raises(AgentInvalid, match="name: String should match pattern"):
            path = f"/v1/pools/{pool.name}/volumes/source.img/clone"
            await api_client._request("POST", path, json={"name": "../escape.img"})
        assert sorted(p.name for p in pool.path.iterdir()) == [
            "copy.img",
            "copy.qcow2",
            "source.img",
            "source.qcow2",
        ]


@pytest.mark.libvirt
@needs_libvirt
async def test_delete_is_refused_while_a_domain_uses_the_volume(
    agent: RunningAgent, pool: Pool, conn: libvirt.virConnect
) -> None:
    async with client(agent) as api_client:
        await api_client.create_volume(pool.name, new("disk.img", 8))
        (pool.path / "install.iso").write_bytes(iso_bytes())
        await api_client.list_volumes(pool.name)  # rescans: the ISO is a volume now
        with shut_off_domain(conn, pool.path / "disk.img") as user:
            with pytest.raises(AgentConflict, match=rf"volume 'disk.img' is used by {user} \(vda\)"):
                await api_client.delete_volume(pool.name, "disk.img")
        with shut_off_domain(conn, pool.path / "install.iso", device="cdrom") as user:
            with pytest.raises(AgentConflict, match=rf"used by {user} \(sda, CD-ROM\)"):
                await api_client.delete_volume(pool.name, "install.iso")
        assert (pool.path / "disk.img").exists() and (pool.path / "install.iso").exists()

        # A base image with an overlay on it: deleting it would break the overlay.
        await api_client.create_volume(pool.name, new("base.qcow2", 8, "qcow2"))
        overlay = etree.Element("volume")
        etree.SubElement(overlay, "name").text = "overlay.qcow2"
        etree.SubElement(overlay, "capacity", unit="bytes").text = str(8 * MIB)
        etree.SubElement(etree.SubElement(overlay, "target"), "format", type="qcow2")
        store = etree.SubElement(overlay, "backingStore")
        etree.SubElement(store, "path").text = str(pool.path / "base.qcow2")
        etree.SubElement(store, "format", type="qcow2")
        pool.pool.createXML(etree.tostring(overlay, encoding="unicode"), 0)
        with pytest.raises(AgentConflict, match=r"is the backing image of .*overlay\.qcow2"):
            await api_client.delete_volume(pool.name, "base.qcow2")

        for name in ("disk.img", "install.iso", "overlay.qcow2", "base.qcow2"):
            result = await api_client.delete_volume(pool.name, name)
            assert result.volume is None and result.detail == f"volume {name!r} deleted"
            assert not (pool.path / name).exists()
        assert (await api_client.list_volumes(pool.name)).total == 0
        with pytest.raises(AgentNotFound, match=r"no volume 'disk\.img'"):
            await api_client.delete_volume(pool.name, "disk.img")


@pytest.mark.libvirt
@needs_libvirt
async def test_download_whole_and_resumed(agent: RunningAgent, pool: Pool) -> None:
    pattern = os.urandom(5 * MIB + 4321)
    async with client(agent) as api_client:
        await api_client.create_volume(pool.name, new("data.img", 6))
        with (pool.path / "data.img").open("r+b") as out:
            out.write(pattern)
        expected = (pool.path / "data.img").read_bytes()
        assert len(expected) == 6 * MIB

        status, headers, body = await download(api_client, pool.name, "data.img")
        assert status == 200 and body == expected
        assert headers["Content-Length"] == str(6 * MIB) and headers["Accept-Ranges"] == "bytes"
        assert headers["Content-Disposition"].startswith('attachment; filename="data.img"')
        assert headers["Content-Type"] == "application/octet-stream"
        etag = headers["ETag"]

        # Interrupted mid-way, then resumed where it stopped.
        held = b""
        async with api_client.download_volume(pool.name, "data.img") as resp:
            async for chunk in resp.content.iter_chunked(64 * 1024):
                held += chunk
                if len(held) >= 2 * MIB + 17:
                    break
        status, headers, rest = await download(
            api_client, pool.name, "data.img", offset=len(held), if_range=etag
        )
        assert status == 206 and held + rest == expected
        assert headers["Content-Range"] == f"bytes {len(held)}-{6 * MIB - 1}/{6 * MIB}"
        assert headers["Content-Length"] == str(6 * MIB - len(held))

        # The volume changed since: all of it again.
        status, _headers, body = await download(
            api_client, pool.name, "data.img", offset=len(held), if_range='"stale"'
        )
        assert status == 200 and body == expected
        with pytest.raises(AgentError) as err:
            await download(api_client, pool.name, "data.img", offset=6 * MIB)
        assert err.value.status == 416 and err.value.code == "range_not_satisfiable"

        (pool.path / "boot.iso").write_bytes(iso_bytes())
        await api_client.list_volumes(pool.name)
        status, headers, body = await download(api_client, pool.name, "boot.iso")
        assert status == 200 and body == iso_bytes()


@pytest.mark.libvirt
@needs_libvirt
async def test_unknown_pools_and_volumes(agent: RunningAgent, pool: Pool) -> None:
    async with client(agent) as api_client:
        with pytest.raises(AgentNotFound, match="no storage pool 'nope-x' on this host"):
            await api_client.list_volumes("nope-x")
        with pytest.raises(AgentNotFound, match="no storage pool 'nope-x'"):
            await api_client.create_volume("nope-x", new("a.img", 1))
        with pytest.raises(AgentNotFound, match=f"no volume 'ghost.img' in storage pool '{pool.name}'"):
            await api_client.resize_volume(pool.name, "ghost.img", MIB)
        with pytest.raises(AgentNotFound, match=r"no volume 'ghost\.img'"):
            await download(api_client, pool.name, "ghost.img")
        (pool.path / ".hidden").write_bytes(b"x")
        for name in ("..", ".hidden", "."):
            with pytest.raises(AgentNotFound):
                await api_client.delete_volume(pool.name, name)
        with pytest.raises(AgentNotFound):
            await api_client._request("POST", f"/v1/pools/{pool.name}/volumes/a%2F..%2Fb/delete")
        assert (pool.path / ".hidden").exists()


@pytest.mark.libvirt
@needs_libvirt
async def test_a_volume_is_read_through_libvirt_when_it_is_no_file_here(
    pool: Pool, conn: libvirt.virConnect
) -> None:
    """Block devices and network pools are read with virStorageVolDownload (a libvirt stream)."""
    data = os.urandom(3 * MIB + 5)
    (pool.path / "blob").write_bytes(data)
    pool.pool.refresh(0)
    vol = pool.pool.storageVolLookupByName("blob")
    reader = StreamDownload(conn, vol, "blob", len(data))
    whole = b"".join([chunk async for chunk in reader.chunks(0, len(data))])
    part = b"".join([chunk async for chunk in reader.chunks(MIB + 1, MIB)])
    assert whole == data and part == data[MIB + 1 : 2 * MIB + 1]


@pytest.mark.libvirt
@needs_libvirt
@needs_guest
async def test_a_running_guest_sees_its_disk_grow_at_once(
    agent: RunningAgent, conn: libvirt.virConnect
) -> None:
    """Through the domain (libvirt's block resize), not behind QEMU's back; meanwhile, copying or
    reading out the disk it writes is refused, and so is deleting it."""
    label = uuid.uuid4().hex[:8]
    name = f"{PREFIX}grow-{label}.qcow2"
    path = POOL_PATH / name
    spec, kernel, initrd = kernel_guest(f"grow-{label}", disks=[DiskSpec(existing=str(path))])
    try:
        async with client(agent) as api_client:
            await api_client.create_volume("default", new(name, 64, "qcow2"))
            info = await api_client.define(spec)
            target = info.disks[0].target
            assert (await api_client.start(spec.uuid)).state == "running"

            grown = await api_client.resize_volume("default", name, 96 * MIB)
            dom = conn.lookupByUUIDString(str(spec.uuid))
            assert dom.blockInfo(target)[0] == 96 * MIB
            assert grown.volume is not None and grown.volume.capacity_bytes == 96 * MIB
            assert f"live: the guest of {spec.name} sees 0.09 GiB now ({target}" in grown.detail

            with pytest.raises(AgentConflict, match=f"written by running domain {spec.name}"):
                await api_client.clone_volume("default", name, f"{name}-copy")
            with pytest.raises(AgentConflict, match=f"written by running domain {spec.name}"):
                await download(api_client, "default", name)
            with pytest.raises(AgentConflict, match=f"used by {spec.name}"):
                await api_client.delete_volume("default", name)

            await api_client.destroy(spec.uuid)
            await api_client.delete(spec.uuid, delete_disks=False)
            assert (await api_client.delete_volume("default", name)).volume is None
            assert not path.exists()
    finally:
        _force_cleanup(spec.uuid, [path, kernel, initrd])
