"""The files of an upload into a directory pool (agent/uploads.py), and the writing of its bytes.

An upload lives in the pool's directory, beside the volume it becomes (so the last step is an
atomic rename on the same file system):

- `.domus-upload-<id>.part`: the bytes so far; its size is the upload's offset;
- `.domus-upload-<id>.json`: its record (name, length, state, times, digest), written atomically
  (a temporary file renamed over it). It is the agent's memory of the upload: it survives a
  restart of the agent.

Both are hidden files, never volumes (agent/pools.py and agent/volumes.py leave them out).

The SHA-256 is computed as the bytes are written: a hasher per upload, in memory, with the offset
it covers (rebuilt from the .part after a restart, or after a write that failed half-way). Pieces
are written at their offsets in a worker thread, one write in flight while the next piece is read
from the network; free space is checked again at least every 64 MiB.

Old uploads expire: `sweep_uploads` removes the files of an unfinished one, and the record of a
finished one (never its volume), once untouched for the agent's `--upload-expiry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from agent.errors import AgentProblem, InsufficientStorage
from agent.protocol import UploadState
from agent.storage import UPLOAD_FILE_PREFIX

log = logging.getLogger(__name__)

MIB = 1024**2
PIECE = MIB  # bytes read from the network and written at a time
ROOM_EVERY = 64 * MIB  # free space is checked again after this many bytes
IDLE_S = 120.0  # a body that sends nothing for this long has stalled
UNFINISHED: frozenset[UploadState] = frozenset({"uploading", "fetching"})
# A dropped or broken body: what was written is kept, the next piece resumes from there.
BODY_ERRORS = (ConnectionError, HttpProcessingError, asyncio.IncompleteReadError)


@dataclass(frozen=True)
class UploadPool:
    """A running directory pool, where its uploads' files go."""

    name: str
    directory: str


# -- the files ---------------------------------------------------------------------------------
def part_path(directory: str, upload_id: str) -> str:
    return os.path.join(directory, f"{UPLOAD_FILE_PREFIX}{upload_id}.part")


def record_path(directory: str, upload_id: str) -> str:
    return os.path.join(directory, f"{UPLOAD_FILE_PREFIX}{upload_id}.json")


class UploadRecord(BaseModel):
    """What the sidecar file holds: the agent's record of one upload or fetch."""

    id: str
    name: str
    length: int | None
    created_at: float
    updated_at: float
    state: UploadState
    sha256: str | None = None
    path: str | None = None  # the volume's, once complete
    source_url: str | None = None  # fetches: the URL as shown (no credentials, no query)
    error: str | None = None


def write_record(directory: str, record: UploadRecord) -> None:
    """Atomically: readers (and a restarted agent) see the old record or the new, never half."""
    final = record_path(directory, record.id)
    temporary = final + ".tmp"
    raw = record.model_dump_json().encode()
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, raw) != len(raw):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(
                f"the record of upload {record.id} cannot be written: {directory} is full"
            ) from err
        raise


def read_record(directory: str, upload_id: str) -> UploadRecord | None:
    try:
        with open(record_path(directory, upload_id), "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    try:
        return UploadRecord.model_validate_json(raw)
    except ValidationError:
        log.warning("upload record %s in %s is unreadable: taken as absent", upload_id, directory)
        return None


def records_in(directory: str) -> list[UploadRecord]:
    """Every readable upload record of a directory."""
    found = []
    for entry in os.scandir(directory):
        name = entry.name
        if name.startswith(UPLOAD_FILE_PREFIX) and name.endswith(".json"):
            record = read_record(directory, name[len(UPLOAD_FILE_PREFIX) : -len(".json")])
            if record is not None:
                found.append(record)
    return found


def part_size(directory: str, upload_id: str) -> int:
    try:
        return os.stat(part_path(directory, upload_id)).st_size
    except FileNotFoundError:
        return 0


def remove_files(directory: str, upload_id: str, *, record: bool) -> None:
    """The .part (and, with `record`, the record) of an upload; gone already is fine."""
    paths = [part_path(directory, upload_id)]
    if record:
        paths += [record_path(directory, upload_id), record_path(directory, upload_id) + ".tmp"]
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def free_bytes(directory: str) -> int:
    """What the file system under `directory` has free for the agent (statvfs, as libvirt's
    directory pools count their available bytes)."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def size_for_people(count: int) -> str:
    """ "4.5 GiB", "136 MiB", "12 KiB", "10 bytes": an upload may be of any size."""
    for unit, name in ((1024**3, "GiB"), (MIB, "MiB"), (1024, "KiB")):
        if count >= unit:
            return f"{count / unit:.2f}".rstrip("0").rstrip(".") + f" {name}"
    return f"{count} bytes"


def check_room(directory: str, pool: str, needed: int, what: str) -> None:
    available = free_bytes(directory)
    if needed > available:
        raise InsufficientStorage(
            f"{what} needs {size_for_people(needed)} and storage pool {pool!r} has "
            f"{size_for_people(available)} free"
        )


def hash_file(path: str, size: int) -> Hasher:
    """A SHA-256 of the first `size` bytes of `path` (blocking: run in a thread)."""
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        remaining = size
        while remaining > 0:
            data = handle.read(min(8 * MIB, remaining))
            if not data:
                raise OSError(f"{path} ended at {size - remaining} bytes, not {size}")
            hasher.update(data)
            remaining -= len(data)
    return hasher


# -- expiry ------------------------------------------------------------------------------------
def _upload_id_of(file_name: str) -> str | None:
    if not file_name.startswith(UPLOAD_FILE_PREFIX):
        return None
    rest = file_name[len(UPLOAD_FILE_PREFIX) :]
    for suffix in (".part", ".json", ".json.tmp"):
        if rest.endswith(suffix):
            return rest[: -len(suffix)]
    return None


def sweep_uploads(directory: str, *, now: float, max_age: float, busy: Collection[str] = ()) -> list[str]:
    """Remove the uploads of `directory` untouched for more than `max_age` seconds at `now`: both
    files of an unfinished one, the record of a finished one (complete or failed: its volume, if
    any, stays). A record still "fetching" while no fetch runs (`busy` holds the ids being
    written) was cut off by a restart of the agent: it is failed now. Files left without a record
    go by their age. Returns the ids removed."""
    removed = []
    ids: dict[str, float] = {}
    for entry in os.scandir(directory):
        upload_id = _upload_id_of(entry.name)
        if upload_id is not None:
            with contextlib.suppress(FileNotFoundError):
                ids[upload_id] = max(ids.get(upload_id, 0.0), entry.stat().st_mtime)
    for upload_id, mtime in sorted(ids.items()):
        if upload_id in busy:
            continue
        record = read_record(directory, upload_id)
        if record is not None and record.state == "fetching":
            record = fail_interrupted(directory, record, now=now)
        touched = record.updated_at if record is not None else mtime
        if now - touched <= max_age:
            continue
        remove_files(directory, upload_id, record=True)
        removed.append(upload_id)
        log.info("upload %s in %s expired: removed", upload_id, directory)
    return removed


def fail_interrupted(directory: str, record: UploadRecord, *, now: float) -> UploadRecord:
    """A fetch the agent no longer runs (it restarted meanwhile): failed, its bytes removed."""
    remove_files(directory, record.id, record=False)
    failed = record.model_copy(
        update={
            "state": "failed",
            "error": "the agent restarted during the fetch: fetch it again",
            "updated_at": now,
        }
    )
    write_record(directory, failed)
    return failed


# -- writing -----------------------------------------------------------------------------------
class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass
class LiveUpload:
    """What the agent holds in memory about one upload: who writes it, and the digest so far."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    hasher: Hasher | None = None
    hashed: int = 0  # the bytes the hasher has seen
    task: asyncio.Task[None] | None = None  # a fetch running
    meter: RateMeter | None = None


class RateMeter:
    """Bytes per second over the last few seconds."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._samples: list[tuple[float, int]] = [(clock(), 0)]
        self._total = 0

    def add(self, count: int) -> None:
        self._total += count
        now = self.clock()
        self._samples.append((now, self._total))
        while len(self._samples) > 2 and self._samples[1][0] < now - self.window_s:
            self._samples.pop(0)

    def rate(self) -> float:
        start, first = self._samples[0]
        end, last = self._samples[-1]
        return (last - first) / (end - start) if end > start else 0.0


def _write_at(fd: int, data: bytes, position: int, hasher: Hasher, room: Callable[[], None] | None) -> None:
    """Blocking: check the room left first if `room`, then all of `data` at `position`, then into
    the digest (hashlib releases the GIL for pieces this size: hashing runs beside the event loop)."""
    if room is not None:
        room()
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], position + done)
    hasher.update(data)


class PartWriter:
    """Pieces written in order at the end of an open .part, one write in a worker thread while
    the caller reads the next piece. `position` is where the next piece goes (what is written
    once `drain` returns without an error)."""

    def __init__(
        self,
        fd: int,
        live: LiveUpload,
        upload: UploadPool,
        *,
        position: int,
        length: int | None,
        what: str,
    ) -> None:
        self.fd = fd
        self.live = live
        self.upload = upload
        self.position = position
        self.length = length
        self.what = what
        self._pending: asyncio.Future[None] | None = None
        self._next_room_check = position + ROOM_EVERY

    def room_left_for(self, position: int) -> Callable[[], None]:
        """A check (blocking: statvfs) that the rest of the upload from `position` still fits."""

        def check() -> None:
            if self.length is not None and self.length > position:
                needed = self.length - position
                check_room(self.upload.directory, self.upload.name, needed, f"the rest of {self.what}")

        return check

    async def add(self, data: bytes) -> None:
        await self.drain()
        position = self.position
        room = None
        if position >= self._next_room_check:
            self._next_room_check = position + ROOM_EVERY
            room = self.room_left_for(position)
        hasher = self.live.hasher
        assert hasher is not None and self.live.hashed == position
        self.position += len(data)
        self._pending = asyncio.ensure_future(self._write(data, position, hasher, room))

    async def _write(
        self, data: bytes, position: int, hasher: Hasher, room: Callable[[], None] | None
    ) -> None:
        try:
            await asyncio.to_thread(_write_at, self.fd, data, position, hasher, room)
        except OSError as err:
            self.live.hasher = None  # it may not match the file any more: rebuilt next time
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(
                    f"storage pool {self.upload.name!r} is full: {self.what} stopped at {position} bytes"
                ) from err
            raise AgentProblem(f"writing {self.what}: {err.strerror or err}") from err
        except InsufficientStorage:
            self.position = position
            raise
        self.live.hashed = position + len(data)

    async def drain(self) -> None:
        """Wait for the write in flight; even when cancelled, the write ends before this does
        (the hasher and the file must agree)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            await asyncio.shield(pending)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await pending
            raise


class Readable(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


async def read_piece(content: Readable, limit: int) -> tuple[bytes, BaseException | None]:
    """Up to `limit` bytes of a body (fewer only at its end), and the error that ended it early,
    if any: the bytes that came before a dropped connection are still written."""
    parts: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(IDLE_S) as idle:
            while total < limit:
                data = await content.read(limit - total)
                if not data:
                    break
                parts.append(data)
                total += len(data)
                idle.reschedule(asyncio.get_running_loop().time() + IDLE_S)
    except (*BODY_ERRORS, TimeoutError) as err:
        return b"".join(parts), err
    return b"".join(parts), None
