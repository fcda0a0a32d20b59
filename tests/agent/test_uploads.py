"""Uploads and fetches into a directory pool, through the agent's HTTP API and its client, on the
host's real libvirt (qemu:///system): each test gets a dir pool of its own in a temporary
directory. Fetches come from servers on loopback, which the agent is told to allow
(DOMUS_AGENT_NETINSTALL_ALLOW=127.0.0.1/32, as `--netinstall-allow`); 127.0.0.2 (loopback too,
not allowed) stands for what must stay out of reach.

Also, without a daemon: the models, the expiry sweep, the free-space check every 64 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import socketserver
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import libvirt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree
from pydantic import ValidationError

from agent import upload_files
from agent.__main__ import parse_args
from agent.client import (
    AgentClient,
    AgentConflict,
    AgentInsufficientStorage,
    AgentInvalid,
    AgentNotFound,
)
from agent.errors import InsufficientStorage
from agent.protocol import FetchRequest, StatsEvent, UploadCreateRequest, UploadStatus
from agent.upload_files import (
    LiveUpload,
    PartWriter,
    UploadPool,
    UploadRecord,
    part_path,
    record_path,
    sweep_uploads,
    write_record,
)
from tests.agent.conftest import RunningAgent, launch_agent, stop_agent
from tests.agent.test_events import next_event
from tests.agent.test_real_libvirt import POOL_PATH, PREFIX, SLOW, URI, _libvirt_available

MIB = 1024 * 1024
ALLOW_LOOPBACK = {"DOMUS_AGENT_NETINSTALL_ALLOW": "127.0.0.1/32"}
needs_libvirt = pytest.mark.skipif(not _libvirt_available(), reason=f"`virsh -c {URI} version` fails")


def new_id() -> str:
    return uuid.uuid4().hex


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- without a daemon --------------------------------------------------------------------------
def test_the_requests_are_checked() -> None:
    upload_id = new_id()
    assert UploadCreateRequest(id=upload_id, name="debian.iso", length=1).length == 1
    for bad in (
        {"id": upload_id.upper(), "name": "a.iso", "length": 1},
        {"id": upload_id, "name": ".domus-upload-x", "length": 1},
        {"id": upload_id, "name": "../a.iso", "length": 1},
        {"id": upload_id, "name": "a.iso", "length": 0},
        {"id": upload_id, "name": "a.iso", "length": 4 * 1024**4 + 1},
    ):
        with pytest.raises(ValidationError):
            UploadCreateRequest.model_validate(bad)
    fetch = FetchRequest(id=upload_id, name="a.iso", url="ftp://mirror.example/pub/a.iso")
    assert fetch.max_bytes == 64 * 1024**3 and fetch.sha256 is None
    for url in ("file:///etc/shadow", "gopher://x/", "http://", "http://a b/", "https://x:port/", "h" * 2049):
        with pytest.raises(ValidationError):
            FetchRequest(id=upload_id, name="a.iso", url=url)
    with pytest.raises(ValidationError):
        FetchRequest(id=upload_id, name="a.iso", url="http://x/a", sha256="A" * 64)


def test_the_upload_expiry_option() -> None:
    assert parse_args(["serve"]).upload_expiry == 86400
    assert parse_args(["--upload-expiry", "600"]).upload_expiry == 600
    with pytest.raises(SystemExit):
        parse_args(["--upload-expiry", "0"])


def _record(directory: Path, upload_id: str, *, state: str, updated_at: float, name: str = "x.iso") -> None:
    record = UploadRecord.model_validate(
        {
            "id": upload_id,
            "name": name,
            "length": 10,
            "created_at": updated_at,
            "updated_at": updated_at,
            "state": state,
        }
    )
    write_record(str(directory), record)


def test_the_sweep_removes_what_is_older_than_the_expiry(tmp_path: Path) -> None:
    now = 1_000_000.0
    day = 86400.0
    old, fresh, done, failed, busy, orphan, fetching = (new_id() for _ in range(7))
    for upload_id, state, age in (
        (old, "uploading", day + 1),
        (fresh, "uploading", day - 60),
        (done, "complete", day + 1),
        (failed, "failed", day + 1),
        (busy, "uploading", day + 1),
        (fetching, "fetching", 10),
    ):
        _record(tmp_path, upload_id, state=state, updated_at=now - age)
        if state in ("uploading", "fetching"):
            Path(part_path(str(tmp_path), upload_id)).write_bytes(b"12345")
    (tmp_path / "x.iso").write_bytes(b"the volume of the complete upload")
    stale = Path(part_path(str(tmp_path), orphan))
    stale.write_bytes(b"no record")
    os.utime(stale, (now - day - 1, now - day - 1))

    removed = sweep_uploads(str(tmp_path), now=now, max_age=day, busy={busy})

    assert sorted(removed) == sorted([old, done, failed, orphan])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [
            "x.iso",  # never the volume
            f".domus-upload-{fresh}.part",
            f".domus-upload-{fresh}.json",
            f".domus-upload-{busy}.part",
            f".domus-upload-{busy}.json",
            f".domus-upload-{fetching}.json",  # its fetch died with the agent: failed, bytes gone
        ]
    )
    record = json.loads(Path(record_path(str(tmp_path), fetching)).read_text())
    assert record["state"] == "failed" and "restarted" in record["error"]
    # A day on, every one of them is old; the busy one is left to its writer.
    assert sorted(sweep_uploads(str(tmp_path), now=now + 2 * day, max_age=day, busy={busy})) == sorted(
        [fresh, fetching]
    )


async def test_free_space_is_checked_again_every_64_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file system fills up from elsewhere during a long piece: the writer stops at the next
    check (statvfs, here faked: the real one is exercised on a tiny tmpfs below)."""
    length = 200 * MIB
    free = {"bytes": 10 * length}
    monkeypatch.setattr(upload_files, "free_bytes", lambda _directory: free["bytes"])
    path = tmp_path / "x.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    live = LiveUpload(hasher=hashlib.sha256())
    writer = PartWriter(fd, live, UploadPool("p", str(tmp_path)), position=0, length=length, what="upload x")
    piece = b"u" * MIB
    try:
        with pytest.raises(InsufficientStorage) as caught:
            for count in range(200):
                if count == 10:
                    free["bytes"] = 100 * MIB  # less than the 136 MiB still to come after 64 MiB
                await writer.add(piece)
            await writer.drain()
    finally:
        os.close(fd)
    assert "the rest of upload x needs 136 MiB and storage pool 'p' has 100 MiB free" in caught.value.detail
    assert writer.position == 64 * MIB and path.stat().st_size == 64 * MIB
    assert live.hashed == 64 * MIB and live.hasher is not None
    assert live.hasher.hexdigest() == sha(piece * 64)


# -- on the host's libvirt -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    log = tmp_path_factory.mktemp("uploads-agent") / "agent.log"
    running = launch_agent(
        uri=URI, pool_dir=POOL_PATH, log_path=log, accel="tcg", ready_timeout=SLOW, env=ALLOW_LOOPBACK
    )
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


@dataclass
class Pool:
    name: str
    path: Path
    pool: libvirt.virStoragePool


def define_dir_pool(conn: libvirt.virConnect, path: Path) -> Pool:
    name = f"{PREFIX}up-{uuid.uuid4().hex[:8]}"
    root = etree.Element("pool", type="dir")
    etree.SubElement(root, "name").text = name
    etree.SubElement(etree.SubElement(root, "target"), "path").text = str(path)
    defined = conn.storagePoolDefineXML(etree.tostring(root, encoding="unicode"), 0)
    defined.create(0)
    return Pool(name, path, defined)


def remove_pool(pool: Pool) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        pool.pool.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        pool.pool.undefine()


@pytest.fixture
def pool(conn: libvirt.virConnect, tmp_path: Path) -> Iterator[Pool]:
    """A dir pool of its own in a temporary directory, defined and started here."""
    path = tmp_path / "pool"
    path.mkdir()
    made = define_dir_pool(conn, path)
    try:
        yield made
    finally:
        remove_pool(made)


def client(agent: RunningAgent) -> AgentClient:
    return AgentClient(agent.url, agent.secret, timeout=SLOW)


def hidden(pool: Pool) -> list[str]:
    return sorted(p.name for p in pool.path.iterdir() if p.name.startswith(".domus-upload-"))


async def listed(api: AgentClient, pool: Pool) -> list[str]:
    """The volumes the agent lists, and those it offers in the host's pools: never upload files."""
    names = [v.name for v in (await api.list_volumes(pool.name)).volumes]
    resources = (await api.host()).resources
    assert resources is not None
    info = next(p for p in resources.pools if p.name == pool.name)
    assert info.volume_count == len(names)
    assert {v.name for v in info.volumes} <= set(names)
    assert not any(name.startswith(".") for name in names)
    return names


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def wait_for(api: AgentClient, pool: str, upload_id: str, *states: str) -> UploadStatus:
    async with asyncio.timeout(60):
        while True:
            status = await api.upload_status(pool, upload_id)
            if status.state in states:
                return status
            await asyncio.sleep(0.05)


@pytest.mark.libvirt
@needs_libvirt
async def test_an_upload_in_three_pieces_becomes_a_volume(
    agent: RunningAgent, pool: Pool, conn: libvirt.virConnect
) -> None:
    data = os.urandom(5 * MIB + 12345)
    upload_id = new_id()
    cut1, cut2 = 2 * MIB + 7, 4 * MIB + 1
    async with client(agent) as api, api.events() as events:
        assert (await next_event(events)).type == "inventory"
        status = await api.create_upload(pool.name, upload_id, "debian.iso", len(data))
        assert (status.state, status.offset, status.length, status.name) == (
            "uploading",
            0,
            len(data),
            "debian.iso",
        )
        assert hidden(pool) == [f".domus-upload-{upload_id}.json", f".domus-upload-{upload_id}.part"]
        # libvirt lists a dir pool's dot files as volumes; the agent never does.
        pool.pool.refresh(0)
        assert f".domus-upload-{upload_id}.part" in pool.pool.listVolumes()
        assert await listed(api, pool) == []

        # Asked again (a retry): the upload as it stands, not a new one.
        again = await api.create_upload(pool.name, upload_id, "debian.iso", len(data))
        assert again.offset == 0 and again.state == "uploading"

        status = await api.upload_chunk(pool.name, upload_id, 0, data[:cut1])  # with a Content-Length
        assert (status.offset, status.state) == (cut1, "uploading")
        status = await api.upload_chunk(
            pool.name, upload_id, cut1, pieces(data[cut1:cut2], 100_000)
        )  # chunked
        assert (status.offset, status.state, status.sha256) == (cut2, "uploading", None)
        assert (await api.upload_status(pool.name, upload_id)).offset == cut2
        assert await listed(api, pool) == []

        done = await api.upload_chunk(pool.name, upload_id, cut2, pieces(data[cut2:], MIB))
        assert (done.state, done.offset, done.length) == ("complete", len(data), len(data))
        assert done.sha256 == sha(data) and done.path == str(pool.path / "debian.iso")
        assert (pool.path / "debian.iso").read_bytes() == data
        assert hidden(pool) == [f".domus-upload-{upload_id}.json"]  # the record, for status
        assert await listed(api, pool) == ["debian.iso"]
        volume = (await api.list_volumes(pool.name)).volumes[0]
        assert volume.capacity_bytes == len(data)
        # The console hears of the new volume.
        async with asyncio.timeout(15):
            while True:
                event = await next_event(events)
                if isinstance(event, StatsEvent) and event.resources is not None:
                    mine = [p for p in event.resources.pools if p.name == pool.name]
                    if mine and mine[0].volume_count == 1:
                        assert [v.name for v in mine[0].volumes] == ["debian.iso"]
                        break

        assert (await api.upload_status(pool.name, upload_id)).model_dump() == done.model_dump()
        assert (await api.create_upload(pool.name, upload_id, "debian.iso", len(data))).state == "complete"
        with pytest.raises(AgentConflict, match="already complete"):
            await api.upload_chunk(pool.name, upload_id, len(data), b"")
        with pytest.raises(AgentConflict, match="exists already"):
            await api.create_upload(pool.name, upload_id, "debian.iso", len(data) + 1)

        # Forgetting a complete upload forgets its record, never the volume.
        await api.delete_upload(pool.name, upload_id)
        assert hidden(pool) == [] and (pool.path / "debian.iso").read_bytes() == data
        with pytest.raises(AgentNotFound):
            await api.upload_status(pool.name, upload_id)
        with pytest.raises(AgentNotFound):
            await api.delete_upload(pool.name, upload_id)


@pytest.mark.libvirt
@needs_libvirt
async def test_a_piece_at_the_wrong_offset_is_refused_with_the_right_one(
    agent: RunningAgent, pool: Pool
) -> None:
    data = os.urandom(3 * MIB)
    upload_id = new_id()
    async with client(agent) as api:
        await api.create_upload(pool.name, upload_id, "img.raw", len(data))
        await api.upload_chunk(pool.name, upload_id, 0, data[:MIB])
        for wrong in (0, MIB - 1, MIB + 1):  # a retry of a piece already written; one sent ahead
            with pytest.raises(AgentConflict) as caught:
                await api.upload_chunk(pool.name, upload_id, wrong, data[wrong:])
            assert caught.value.offset == MIB and caught.value.code == "offset_mismatch"
            assert f"is at offset {MIB}, not {wrong}" in caught.value.detail
        # Raw: the problem body carries it for any client.
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {agent.secret}"}) as http:
            url = f"{agent.url}/v1/pools/{pool.name}/uploads/{upload_id}"
            async with http.patch(url, data=b"x", headers={"Upload-Offset": "5"}) as resp:
                assert resp.status == 409 and (await resp.json())["offset"] == MIB
            async with http.patch(url, data=b"x") as resp:  # no offset at all
                assert resp.status == 400 and "Upload-Offset" in (await resp.json())["detail"]
            # A piece is never read whole to be remembered under an idempotency key: it streams.
            headers = {"Upload-Offset": str(MIB), "Idempotency-Key": "job-7:PATCH piece"}
            async with http.patch(url, data=data[MIB:], headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                status = UploadStatus.model_validate(await resp.json())
        assert status.state == "complete" and status.sha256 == sha(data)


@pytest.mark.libvirt
@needs_libvirt
async def test_a_body_past_the_length_is_refused_and_nothing_past_it_written(
    agent: RunningAgent, pool: Pool
) -> None:
    data = os.urandom(2 * MIB + 10)
    upload_id = new_id()
    async with client(agent) as api:
        await api.create_upload(pool.name, upload_id, "small.iso", len(data))
        # Its Content-Length says so: refused before a byte is written.
        with pytest.raises(AgentInvalid, match=r"goes past the upload's length"):
            await api.upload_chunk(pool.name, upload_id, 0, data + b"more")
        assert (await api.upload_status(pool.name, upload_id)).offset == 0
        # Chunked: found out as it comes; what came before the length's end is kept, no byte past it.
        with pytest.raises(AgentInvalid, match=r"nothing past it was written"):
            await api.upload_chunk(pool.name, upload_id, 0, pieces(data + b"more", MIB))
        status = await api.upload_status(pool.name, upload_id)
        assert status.state == "uploading" and status.offset <= len(data)
        assert Path(part_path(str(pool.path), upload_id)).stat().st_size == status.offset
        assert not (pool.path / "small.iso").exists()
        # Exactly the length, chunked, even in the very piece that reaches it: whole.
        with pytest.raises(AgentInvalid):
            await api.upload_chunk(
                pool.name, upload_id, status.offset, pieces(data[status.offset :] + b"x", 10**9)
            )
        done = await api.upload_chunk(
            pool.name, upload_id, status.offset, pieces(data[status.offset :], 10**9)
        )
        assert done.state == "complete" and done.sha256 == sha(data)
        assert (pool.path / "small.iso").read_bytes() == data

        # The agent's piece that reaches the length exactly is held until the body is seen to end
        # there: a body one byte longer leaves the upload short of its length, never "whole".
        exact, even = new_id(), os.urandom(2 * MIB)
        await api.create_upload(pool.name, exact, "even.iso", len(even))
        with pytest.raises(AgentInvalid, match="nothing past it was written"):
            await api.upload_chunk(pool.name, exact, 0, pieces(even + b"x", MIB))
        status = await api.upload_status(pool.name, exact)
        assert status.state == "uploading" and status.offset == MIB
        done = await api.upload_chunk(pool.name, exact, MIB, pieces(even[MIB:], MIB))
        assert done.state == "complete" and done.sha256 == sha(even)


@contextlib.asynccontextmanager
async def patch_then_drop(
    agent: RunningAgent, pool: str, upload_id: str, offset: int, data: bytes
) -> AsyncIterator[None]:
    """A PATCH whose chunked body breaks off after `data`: the connection closes mid-chunk when
    the block ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    head = (
        f"PATCH /v1/pools/{pool}/uploads/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {agent.secret}\r\nUpload-Offset: {offset}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
        f"{len(data) + 4096:x}\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()
    try:
        yield
    finally:
        writer.close()
        await writer.wait_closed()
        del reader


async def offset_reaches(api: AgentClient, pool: str, upload_id: str, offset: int) -> UploadStatus:
    async with asyncio.timeout(15):
        while (status := await api.upload_status(pool, upload_id)).offset < offset:
            await asyncio.sleep(0.05)
    return status


@pytest.mark.libvirt
@needs_libvirt
async def test_a_dropped_piece_keeps_what_arrived_and_the_next_resumes(
    agent: RunningAgent, pool: Pool
) -> None:
    data = os.urandom(6 * MIB + 333)
    upload_id = new_id()
    sent = 3 * MIB + 12345  # not a multiple of the agent's pieces (1 MiB)
    async with client(agent) as api:
        await api.create_upload(pool.name, upload_id, "resumed.iso", len(data))
        async with patch_then_drop(agent, pool.name, upload_id, 0, data[:sent]):
            # Written as it arrives (whole pieces while the body goes on)...
            assert (await offset_reaches(api, pool.name, upload_id, 3 * MIB)).offset == 3 * MIB
            await asyncio.sleep(0.5)
        # ... and the rest that arrived once the connection dropped: all of it is kept.
        status = await offset_reaches(api, pool.name, upload_id, sent)
        assert status.offset == sent and status.state == "uploading"
        assert Path(part_path(str(pool.path), upload_id)).read_bytes() == data[:sent]
        # Once the dropped request has let go, the next piece goes on from there.
        async with asyncio.timeout(15):
            while True:
                try:
                    done = await api.upload_chunk(pool.name, upload_id, sent, data[sent:])
                    break
                except AgentConflict as err:
                    assert "being written by another request" in err.detail
                    await asyncio.sleep(0.05)
        assert done.state == "complete" and done.sha256 == sha(data)
        assert (pool.path / "resumed.iso").read_bytes() == data


@pytest.mark.libvirt
@needs_libvirt
async def test_one_writer_at_a_time(agent: RunningAgent, pool: Pool) -> None:
    data = os.urandom(3 * MIB)
    upload_id = new_id()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[:MIB]
        await release.wait()
        yield data[MIB:]

    async with client(agent) as api, client(agent) as other:
        await api.create_upload(pool.name, upload_id, "slow.iso", len(data))
        first = asyncio.create_task(api.upload_chunk(pool.name, upload_id, 0, slow()))
        try:
            async with asyncio.timeout(15):
                while (await other.upload_status(pool.name, upload_id)).offset < MIB:
                    await asyncio.sleep(0.05)
            with pytest.raises(
                AgentConflict, match=f"upload {upload_id} is being written by another request"
            ):
                await other.upload_chunk(pool.name, upload_id, MIB, data[MIB:])
            with pytest.raises(AgentConflict, match="being written by another request"):
                await other.delete_upload(pool.name, upload_id)
        finally:
            release.set()
        done = await first
        assert done.state == "complete" and done.sha256 == sha(data)


@pytest.mark.libvirt
@needs_libvirt
async def test_an_agent_restarted_mid_upload_rebuilds_the_digest(
    pool: Pool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = os.urandom(4 * MIB + 99)
    upload_id = new_id()
    # Left by an earlier agent, long untouched: swept away when the next one starts.
    expired = new_id()
    _record(pool.path, expired, state="uploading", updated_at=time.time() - 86400 - 60, name="old.iso")
    Path(part_path(str(pool.path), expired)).write_bytes(b"stale")
    log = tmp_path_factory.mktemp("restart") / "agent.log"
    first = launch_agent(uri=URI, pool_dir=POOL_PATH, log_path=log, accel="tcg", ready_timeout=SLOW)
    try:
        async with client(first) as api:
            async with asyncio.timeout(30):
                while hidden(pool) != []:
                    await asyncio.sleep(0.1)
            await api.create_upload(pool.name, upload_id, "restart.iso", len(data))
            await api.upload_chunk(pool.name, upload_id, 0, data[: 2 * MIB + 1])
    finally:
        stop_agent(first)
    second = launch_agent(uri=URI, pool_dir=POOL_PATH, log_path=log, accel="tcg", ready_timeout=SLOW)
    try:
        async with client(second) as api:
            status = await api.upload_status(pool.name, upload_id)
            assert (status.state, status.offset) == ("uploading", 2 * MIB + 1)
            done = await api.upload_chunk(pool.name, upload_id, status.offset, data[status.offset :])
            assert done.state == "complete" and done.sha256 == sha(data)
        assert f"upload {upload_id}: digest rebuilt from its first {2 * MIB + 1} bytes" in second.log()
    finally:
        stop_agent(second)


@pytest.mark.libvirt
@needs_libvirt
async def test_a_taken_name_is_refused(agent: RunningAgent, pool: Pool) -> None:
    (pool.path / "taken.iso").write_bytes(b"by hand")
    async with client(agent) as api:
        with pytest.raises(
            AgentConflict, match=f"storage pool '{pool.name}' already has a volume 'taken.iso'"
        ):
            await api.create_upload(pool.name, new_id(), "taken.iso", 10)
        under_way = new_id()
        await api.create_upload(pool.name, under_way, "new.iso", 10)
        with pytest.raises(AgentConflict, match=f"upload {under_way} to 'new.iso' is under way"):
            await api.create_upload(pool.name, new_id(), "new.iso", 10)
        # Taken since the upload began (made by hand, say): the last piece is refused, the upload kept.
        (pool.path / "new.iso").write_bytes(b"meanwhile")
        with pytest.raises(AgentConflict, match=r"has had a volume 'new\.iso' since the upload began"):
            await api.upload_chunk(pool.name, under_way, 0, b"0123456789")
        assert (pool.path / "new.iso").read_bytes() == b"meanwhile"
        status = await api.upload_status(pool.name, under_way)
        assert (status.state, status.offset) == ("uploading", 10)
        (pool.path / "new.iso").unlink()
        done = await api.upload_chunk(pool.name, under_way, 10, b"")
        assert done.state == "complete" and (pool.path / "new.iso").read_bytes() == b"0123456789"


@pytest.mark.libvirt
@needs_libvirt
async def test_delete_removes_an_unfinished_upload(agent: RunningAgent, pool: Pool) -> None:
    upload_id = new_id()
    async with client(agent) as api:
        await api.create_upload(pool.name, upload_id, "gone.iso", 10 * MIB)
        await api.upload_chunk(pool.name, upload_id, 0, os.urandom(MIB))
        assert len(hidden(pool)) == 2
        await api.delete_upload(pool.name, upload_id)
        assert hidden(pool) == [] and list(pool.path.iterdir()) == []
        with pytest.raises(AgentNotFound, match=f"no upload {upload_id}"):
            await api.upload_status(pool.name, upload_id)
        with pytest.raises(AgentNotFound):
            await api.upload_chunk(pool.name, upload_id, MIB, b"x")
        with pytest.raises(AgentNotFound, match=r"no storage pool 'no-such-pool'"):
            await api.upload_status("no-such-pool", upload_id)
        with pytest.raises(AgentNotFound, match="32 lowercase hex"):
            await api._raw_request("GET", f"/v1/pools/{pool.name}/uploads/..%2F..%2Fetc")


@pytest.mark.libvirt
@needs_libvirt
async def test_only_directory_pools_take_uploads(
    agent: RunningAgent, conn: libvirt.virConnect, test_agent: RunningAgent
) -> None:
    root = etree.Element("pool", type="logical")
    name = f"{PREFIX}up-lvm-{uuid.uuid4().hex[:6]}"
    etree.SubElement(root, "name").text = name
    etree.SubElement(etree.SubElement(root, "source"), "name").text = "domus-no-such-vg"
    etree.SubElement(etree.SubElement(root, "target"), "path").text = "/dev/domus-no-such-vg"
    logical = conn.storagePoolDefineXML(etree.tostring(root, encoding="unicode"), 0)
    try:
        async with client(agent) as api:
            with pytest.raises(
                AgentInvalid,
                match=rf"uploads go to directory pools \(dir, fs, netfs\); pool '{name}' is logical",
            ):
                await api.create_upload(name, new_id(), "a.iso", 10)
            with pytest.raises(AgentInvalid, match="is logical"):
                await api.fetch_url(
                    name, FetchRequest(id=new_id(), name="a.iso", url="http://127.0.0.1/a.iso")
                )
    finally:
        logical.undefine()
    async with client(test_agent) as api:  # libvirt's test driver: its dir pool's files are not here
        with pytest.raises(AgentInvalid, match="belongs to libvirt's test driver"):
            await api.create_upload("default", new_id(), "a.iso", 10)


@pytest.fixture
def tiny_pool(conn: libvirt.virConnect, tmp_path: Path) -> Iterator[Pool]:
    """A dir pool on a tmpfs of 8 MiB."""
    path = tmp_path / "tiny"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        made = define_dir_pool(conn, path)
        try:
            yield made
        finally:
            remove_pool(made)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.libvirt
@needs_libvirt
async def test_no_room_is_507(agent: RunningAgent, tiny_pool: Pool) -> None:
    async with client(agent) as api:
        with pytest.raises(
            AgentInsufficientStorage,
            match=rf"length: an upload of 'big\.iso' needs 9 MiB and storage pool '{tiny_pool.name}' has 8 MiB free",
        ):
            await api.create_upload(tiny_pool.name, new_id(), "big.iso", 9 * MIB)
        upload_id = new_id()
        await api.create_upload(tiny_pool.name, upload_id, "fits.iso", 5 * MIB)
        await api.upload_chunk(tiny_pool.name, upload_id, 0, os.urandom(MIB))
        # Something else takes the room meanwhile: the next piece is refused, what was written kept.
        filler = tiny_pool.path / "filler"
        filler.write_bytes(b"\0" * (5 * MIB))
        with pytest.raises(
            AgentInsufficientStorage,
            match=r"the rest of upload .* needs 4 MiB and storage pool .* has 2 MiB free",
        ):
            await api.upload_chunk(tiny_pool.name, upload_id, MIB, os.urandom(4 * MIB))
        assert (await api.upload_status(tiny_pool.name, upload_id)).offset == MIB
        # Full in the middle of a piece (between two checks): the write fails, and it is 507 too.
        filler.unlink()
        status = await api.upload_status(tiny_pool.name, upload_id)

        async def filling() -> AsyncIterator[bytes]:
            yield os.urandom(MIB)
            await asyncio.sleep(0.3)
            filler.write_bytes(b"\0" * (8 * MIB - 3 * MIB))  # the tmpfs is full: the write stops short
            for _ in range(3):
                yield os.urandom(MIB)

        with pytest.raises(AgentInsufficientStorage, match=r"is full: upload .* stopped at"):
            await api.upload_chunk(tiny_pool.name, upload_id, status.offset, filling())
        after = await api.upload_status(tiny_pool.name, upload_id)
        assert MIB <= after.offset < 5 * MIB and after.state == "uploading"
        filler.unlink()
        rest = after.offset
        await api.delete_upload(tiny_pool.name, upload_id)
        assert rest and hidden(tiny_pool) == []


# -- fetches -------------------------------------------------------------------------------------
@dataclass
class Mirror:
    server: TestServer
    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # /slow/<name>: the rest of it

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@contextlib.asynccontextmanager
async def mirror(host: str = "127.0.0.1") -> AsyncIterator[Mirror]:
    """An HTTP server: /f/<name> whole (Content-Length), /chunked/<name> without a length,
    /lie/<name> claims 10 GiB, /moved/<name> redirects to /f/<name>, /to/<name> to redirects[name],
    /slow/<name> sends its first MiB, then the rest once released."""
    app = web.Application()
    state = Mirror(server=TestServer(app, host=host))

    async def serve(request: web.Request) -> web.StreamResponse:
        state.seen.append(request.path)
        kind, name = request.match_info["kind"], request.match_info["name"]
        if kind == "to":
            raise web.HTTPFound(state.redirects[name])
        data = state.files.get(name)
        if data is None:
            return web.Response(status=404, text="SECRET-BODY-OF-A-404")
        if kind == "moved":
            raise web.HTTPFound(f"/f/{name}?token=SECRET")
        if kind == "f":
            return web.Response(body=data)
        response = web.StreamResponse()
        if kind == "lie":
            response.content_length = 10 * 1024**3
        elif kind == "slow":
            response.content_length = len(data)
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        if kind == "slow":
            await response.write(data[:MIB])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.release.wait(), 30)
            await response.write(data[MIB:])
        if kind == "chunked":
            for start in range(0, len(data), 256 * 1024):
                await response.write(data[start : start + 256 * 1024])
            await response.write_eof()
        return response

    app.router.add_get("/{kind}/{name}", serve)
    await state.server.start_server()
    try:
        yield state
    finally:
        await state.server.close()


def fetch(url: str, name: str, **extra: object) -> FetchRequest:
    return FetchRequest.model_validate({"id": new_id(), "name": name, "url": url, **extra})


@pytest.mark.libvirt
@needs_libvirt
async def test_a_fetch_from_an_allowed_server(agent: RunningAgent, pool: Pool) -> None:
    data = os.urandom(3 * MIB + 17)
    async with mirror() as server, client(agent) as api:
        server.files["netinst.iso"] = data
        request = fetch(server.url("/moved/netinst.iso"), "netinst.iso", sha256=sha(data))
        begun = await api.fetch_url(pool.name, request)
        assert begun.state == "fetching" and begun.source_url == server.url("/moved/netinst.iso")
        assert (await api.fetch_url(pool.name, request)).id == request.id  # the same, again
        done = await wait_for(api, pool.name, request.id, "complete", "failed")
        assert done.error is None and done.state == "complete"
        assert (done.sha256, done.length, done.offset) == (sha(data), len(data), len(data))
        assert (
            done.path == str(pool.path / "netinst.iso") and (pool.path / "netinst.iso").read_bytes() == data
        )
        assert server.seen == ["/moved/netinst.iso", "/f/netinst.iso"]
        assert await listed(api, pool) == ["netinst.iso"]

        # No length said (chunked): the length is known once it is whole.
        request = fetch(server.url("/chunked/netinst.iso?key=SECRET"), "chunked.iso")
        begun = await api.fetch_url(pool.name, request)
        assert (
            begun.source_url == server.url("/chunked/netinst.iso") and "SECRET" not in begun.model_dump_json()
        )
        done = await wait_for(api, pool.name, request.id, "complete", "failed")
        assert (done.state, done.sha256, done.length) == ("complete", sha(data), len(data))
        with pytest.raises(AgentConflict, match=r"already has a volume 'chunked\.iso'"):
            await api.fetch_url(pool.name, fetch(server.url("/f/netinst.iso"), "chunked.iso"))


@pytest.mark.libvirt
@needs_libvirt
async def test_a_fetch_that_fails_keeps_its_record_not_its_bytes(agent: RunningAgent, pool: Pool) -> None:
    data = os.urandom(2 * MIB)
    async with mirror() as server, client(agent) as api:
        server.files["a.iso"] = data
        cases = [
            (
                fetch(server.url("/f/a.iso"), "wrong.iso", sha256="0" * 64),
                f"has the SHA-256 {sha(data)}, not the {'0' * 64} expected",
            ),
            (
                fetch(server.url("/f/a.iso"), "big.iso", max_bytes=MIB),
                "is larger than max_bytes (1048576 bytes)",
            ),
            (fetch(server.url("/chunked/a.iso"), "big2.iso", max_bytes=MIB), "is larger than max_bytes"),
            (fetch(server.url("/lie/a.iso"), "lie.iso", max_bytes=MIB), "is larger than max_bytes"),
            (
                fetch(server.url("/f/missing.iso"), "missing.iso"),
                f"url: {server.url('/f/missing.iso')} answered HTTP 404",
            ),
        ]
        for request, _why in cases:
            await api.fetch_url(pool.name, request)
        for request, why in cases:
            failed = await wait_for(api, pool.name, request.id, "complete", "failed")
            assert failed.state == "failed" and failed.error is not None and why in failed.error, failed
            assert "SECRET" not in failed.error
            assert not (pool.path / request.name).exists()
            assert not Path(part_path(str(pool.path), request.id)).exists()
            assert Path(record_path(str(pool.path), request.id)).exists()
            assert failed.offset == 0
        assert await listed(api, pool) == []
        await api.delete_upload(pool.name, cases[0][0].id)
        assert not Path(record_path(str(pool.path), cases[0][0].id)).exists()


@pytest.mark.libvirt
@needs_libvirt
async def test_a_fetch_shows_its_progress_and_a_delete_cancels_it(agent: RunningAgent, pool: Pool) -> None:
    data = os.urandom(4 * MIB)
    async with mirror() as server, client(agent) as api:
        server.files["slow.iso"] = data
        request = fetch(server.url("/slow/slow.iso"), "slow.iso")
        await api.fetch_url(pool.name, request)
        status = await offset_reaches(api, pool.name, request.id, MIB)
        assert (status.state, status.offset, status.length) == ("fetching", MIB, len(data))
        assert status.rate_bytes_per_s is not None and status.rate_bytes_per_s > 0
        assert await listed(api, pool) == []
        with pytest.raises(AgentConflict, match="is a fetch by the agent"):
            await api.upload_chunk(pool.name, request.id, MIB, b"x")
        await api.delete_upload(pool.name, request.id)
        server.release.set()
        await asyncio.sleep(0.5)  # a fetch still running would write its record again by now
        assert list(pool.path.iterdir()) == []
        with pytest.raises(AgentNotFound):
            await api.upload_status(pool.name, request.id)


@pytest.mark.libvirt
@needs_libvirt
async def test_a_fetch_from_a_refused_address_never_connects(agent: RunningAgent, pool: Pool) -> None:
    async with mirror("127.0.0.2") as service, client(agent) as api:
        service.files["a.iso"] = b"SECRET"
        request = fetch(service.url("/f/a.iso"), "a.iso")
        await api.fetch_url(pool.name, request)
        failed = await wait_for(api, pool.name, request.id, "complete", "failed")
        assert (
            failed.error
            == f"url: refused to fetch {service.url('/f/a.iso')}: 127.0.0.2 is a loopback address"
        )
        assert service.seen == []
        # A redirect from an allowed server to it: refused at the hop.
        async with mirror() as allowed:
            target = service.url("/f/a.iso")
            allowed.redirects["a.iso"] = target
            request = fetch(allowed.url("/to/a.iso"), "b.iso")
            await api.fetch_url(pool.name, request)
            failed = await wait_for(api, pool.name, request.id, "complete", "failed")
            assert failed.error == f"url: refused the redirect to {target}: 127.0.0.2 is a loopback address"
        assert service.seen == [] and list(pool.path.glob("*.iso")) == []


class _FtpHandler(socketserver.StreamRequestHandler):
    """Just enough of an FTP server: anonymous login, binary mode, SIZE, PASV (naming another
    address than its own, which a client must not follow) and EPSV, RETR."""

    server: FtpServer

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 ready")
        listener: socket.socket | None = None
        for raw in self.rfile:
            command, _, arg = raw.decode().strip().partition(" ")
            command = command.upper()
            self.server.commands.append(f"{command} {arg}".strip())
            files = self.server.files
            if command == "USER":
                self.reply("331 password please")
            elif command in ("PASS", "TYPE"):
                self.reply("230 in" if command == "PASS" else "200 binary")
            elif command == "SIZE":
                self.reply(f"213 {len(files[arg])}" if arg in files else "550 SECRET-NO-SUCH-FILE")
            elif command in ("PASV", "EPSV"):
                listener = socket.create_server(("127.0.0.1", 0))
                port = listener.getsockname()[1]
                if command == "PASV":
                    self.reply(f"227 Entering Passive Mode (127,0,0,3,{port >> 8},{port & 255})")
                else:
                    self.reply(f"229 Entering Extended Passive Mode (|||{port}|)")
            elif command == "RETR" and listener is not None:
                if arg not in files:
                    self.reply("550 SECRET-NO-SUCH-FILE")
                    continue
                self.reply("150 here it comes")
                data, _ = listener.accept()
                with data:
                    data.sendall(files[arg])
                listener.close()
                self.reply("226 done")
            elif command == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not here")


class FtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.commands: list[str] = []
        super().__init__(("127.0.0.1", 0), _FtpHandler)


@pytest.mark.libvirt
@needs_libvirt
async def test_a_fetch_over_ftp(agent: RunningAgent, pool: Pool) -> None:
    data = os.urandom(MIB + 5)
    server = FtpServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        server.files["/pub/boot.iso"] = data
        port = server.server_address[1]
        async with client(agent) as api:
            request = fetch(f"ftp://127.0.0.1:{port}/pub/boot.iso", "boot.iso", sha256=sha(data))
            await api.fetch_url(pool.name, request)
            done = await wait_for(api, pool.name, request.id, "complete", "failed")
            assert (done.state, done.error, done.sha256, done.length) == (
                "complete",
                None,
                sha(data),
                len(data),
            )
            assert (pool.path / "boot.iso").read_bytes() == data
            assert "USER anonymous" in server.commands and "RETR /pub/boot.iso" in server.commands

            request = fetch(f"ftp://127.0.0.1:{port}/pub/missing.iso", "missing.iso")
            await api.fetch_url(pool.name, request)
            failed = await wait_for(api, pool.name, request.id, "complete", "failed")
            assert (
                failed.error
                == f"url: cannot fetch ftp://127.0.0.1:{port}/pub/missing.iso: the FTP server refused (550)"
            )
    finally:
        server.shutdown()
        server.server_close()
