"""Uploads into a directory pool: ISOs and images sent through the console in resumable pieces
(the console's tus server forwards each piece as it arrives), or fetched by the agent itself from
a URL (agent/fetches.py). Either way the bytes become a volume of the pool once whole: fsynced,
renamed to the volume's name (never over a volume), the pool refreshed and the console told.

The files, the record, the digest and the expiry are agent/upload_files.py's. Here: which pools
take uploads (dir, fs and netfs pools whose files are on this host), the checks at the start (the
name is free, the space is there), the pieces (each at the upload's offset, one writer at a
time), the completion, the background fetches and the periodic sweep of expired uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable

import libvirt
from lxml import etree

from agent.connection import LibvirtConnection
from agent.errors import (
    AgentProblem,
    Conflict,
    InvalidSpec,
    NotFound,
    OffsetConflict,
    is_connection_lost,
)
from agent.fetches import run_fetch, shown_source
from agent.protocol import FetchRequest, UploadCreateRequest, UploadStatus
from agent.upload_files import (
    PIECE,
    UNFINISHED,
    LiveUpload,
    PartWriter,
    RateMeter,
    Readable,
    UploadPool,
    UploadRecord,
    check_room,
    fail_interrupted,
    hash_file,
    part_path,
    part_size,
    read_piece,
    read_record,
    records_in,
    remove_files,
    sweep_uploads,
    write_record,
)
from agent.volumes import pool_named

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 600.0
DEFAULT_EXPIRY_S = 86400.0
# Pool types whose volumes are files in the pool's directory: uploads go there.
UPLOAD_POOLS = frozenset({"dir", "fs", "netfs"})

Changed = Callable[[], None]


# -- the pool ----------------------------------------------------------------------------------
def _pool_root(pool: libvirt.virStoragePool) -> etree._Element:
    return etree.fromstring(pool.XMLDesc(0).encode())


def upload_pool_sync(conn: libvirt.virConnect, name: str, *, local_files: bool) -> UploadPool:
    """Blocking: the directory uploads to pool `name` go to; refused for other pool types."""
    pool = pool_named(conn, name)
    root = _pool_root(pool)
    kind = root.get("type") or "unknown"
    directory = root.findtext("target/path")
    if kind not in UPLOAD_POOLS or not directory:
        raise InvalidSpec(f"uploads go to directory pools (dir, fs, netfs); pool {name!r} is {kind}")
    if not local_files:
        raise InvalidSpec(
            f"uploads go to directory pools (dir, fs, netfs) whose files are on this host; pool {name!r} "
            "belongs to libvirt's test driver"
        )
    if not pool.isActive():
        raise Conflict(f"storage pool {name!r} is not running: start it first")
    return UploadPool(name=name, directory=directory)


def upload_pools_sync(conn: libvirt.virConnect) -> list[UploadPool]:
    """Blocking: every running pool uploads may go to (for the expiry sweep)."""
    pools = []
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        try:
            root = _pool_root(pool)
        except libvirt.libvirtError as err:
            if is_connection_lost(err):
                raise
            continue  # stopped or removed since the listing
        directory = root.findtext("target/path")
        if root.get("type") in UPLOAD_POOLS and directory:
            pools.append(UploadPool(name=str(pool.name()), directory=directory))
    return pools


def refresh_pool_sync(conn: libvirt.virConnect, name: str) -> None:
    """Blocking: rescan, so that the new volume is listed at once; a busy pool lists it later."""
    try:
        conn.storagePoolLookupByName(name).refresh(0)
    except libvirt.libvirtError as err:
        if is_connection_lost(err):
            raise
        log.info("storage pool %s not refreshed after an upload: %s", name, err.get_error_message() or err)


# -- the service -------------------------------------------------------------------------------
def _id_taken(existing: UploadRecord) -> Conflict:
    if existing.source_url is not None:
        what = f"a fetch of {existing.source_url} into {existing.name!r}"
    else:
        what = f"an upload of {existing.length} bytes into {existing.name!r}"
    return Conflict(f"upload {existing.id} exists already, as {what}: an upload id names one upload")


def _status(
    pool: str, directory: str, record: UploadRecord, live: LiveUpload | None, *, size: int | None = None
) -> UploadStatus:
    """`size`: the .part's, read before the record was (else read now)."""
    if record.state == "complete":
        offset = record.length or 0
    else:
        offset = part_size(directory, record.id) if size is None else size
    rate = None
    if record.state == "fetching" and live is not None and live.meter is not None:
        rate = live.meter.rate()
    return UploadStatus(
        id=record.id,
        pool=pool,
        name=record.name,
        length=record.length,
        offset=offset,
        state=record.state,
        sha256=record.sha256,
        path=record.path,
        source_url=record.source_url,
        error=record.error,
        rate_bytes_per_s=rate,
        updated_at=record.updated_at,
    )


class UploadService:
    """Uploads and fetches on the agent's connection; `changed` is called when one completes (a
    new volume: the event hub then publishes fresh pools)."""

    def __init__(
        self,
        conn: LibvirtConnection,
        *,
        changed: Changed,
        local_files: bool,
        expiry_s: float = DEFAULT_EXPIRY_S,
    ) -> None:
        self._conn = conn
        self._changed = changed
        self.local_files = local_files
        self.expiry_s = expiry_s
        self._live: dict[tuple[str, str], LiveUpload] = {}  # by (directory, id)
        self._creating: dict[str, asyncio.Lock] = {}  # by directory: creates and completions
        self._sweeper: asyncio.Task[None] | None = None

    # -- helpers ---------------------------------------------------------------------------
    async def pool(self, name: str) -> UploadPool:
        local = self.local_files
        return await self._conn.call(
            lambda c: upload_pool_sync(c, name, local_files=local), what=f"looking up storage pool {name!r}"
        )

    def live(self, upload: UploadPool, upload_id: str) -> LiveUpload:
        return self._live.setdefault((upload.directory, upload_id), LiveUpload())

    def _names_lock(self, directory: str) -> asyncio.Lock:
        return self._creating.setdefault(directory, asyncio.Lock())

    def _busy(self, directory: str) -> set[str]:
        return {
            upload_id
            for (where, upload_id), live in self._live.items()
            if where == directory and (live.lock.locked() or (live.task is not None and not live.task.done()))
        }

    async def _record(self, upload: UploadPool, upload_id: str) -> UploadRecord:
        record = await asyncio.to_thread(read_record, upload.directory, upload_id)
        if record is None:
            raise NotFound(f"no upload {upload_id} in storage pool {upload.name!r}")
        live = self._live.get((upload.directory, upload_id))
        if record.state == "fetching" and (live is None or live.task is None or live.task.done()):
            record = await asyncio.to_thread(fail_interrupted, upload.directory, record, now=time.time())
        return record

    def _refuse_taken(self, upload: UploadPool, upload_id: str, name: str) -> None:
        """Blocking: a volume `name` in the pool, or another unfinished upload to it, is a conflict."""
        if os.path.lexists(os.path.join(upload.directory, name)):
            raise Conflict(f"storage pool {upload.name!r} already has a volume {name!r}: choose another name")
        for other in records_in(upload.directory):
            if other.id != upload_id and other.name == name and other.state in UNFINISHED:
                raise Conflict(
                    f"upload {other.id} to {name!r} is under way in storage pool {upload.name!r}: "
                    "choose another name, or cancel that upload"
                )

    # -- create, status, delete ------------------------------------------------------------
    async def create(self, pool: str, request: UploadCreateRequest) -> tuple[UploadStatus, bool]:
        """Begin an upload; returns it and whether this call began it (the same id with the same
        name and length is the upload as it stands: the console may retry)."""
        upload = await self.pool(pool)
        async with self._names_lock(upload.directory):
            existing = await asyncio.to_thread(read_record, upload.directory, request.id)
            if existing is not None:
                same = (existing.name, existing.length, existing.source_url)
                if same == (request.name, request.length, None):
                    live = self._live.get((upload.directory, request.id))
                    return _status(pool, upload.directory, existing, live), False
                raise _id_taken(existing)
            record = await asyncio.to_thread(
                self._begin, upload, request.id, request.name, request.length, None
            )
        log.info("upload %s to %s of pool %s begun: %d bytes", request.id, request.name, pool, request.length)
        return _status(pool, upload.directory, record, None), True

    def _begin(
        self, upload: UploadPool, upload_id: str, name: str, length: int | None, source_url: str | None
    ) -> UploadRecord:
        """Blocking: the checks, then an empty .part and its record."""
        self._refuse_taken(upload, upload_id, name)
        if length is not None:
            check_room(upload.directory, upload.name, length, f"length: an upload of {name!r}")
        now = time.time()
        record = UploadRecord(
            id=upload_id,
            name=name,
            length=length,
            created_at=now,
            updated_at=now,
            state="uploading" if source_url is None else "fetching",
            source_url=source_url,
        )
        fd = os.open(
            part_path(upload.directory, upload_id),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            0o600,
        )
        os.close(fd)
        write_record(upload.directory, record)
        return record

    async def status(self, pool: str, upload_id: str) -> UploadStatus:
        upload = await self.pool(pool)
        # The size before the record: a fetch records its length before its first byte, so a
        # fetch running meanwhile never shows bytes without the length it announced.
        size = await asyncio.to_thread(part_size, upload.directory, upload_id)
        record = await self._record(upload, upload_id)
        live = self._live.get((upload.directory, upload_id))
        return _status(pool, upload.directory, record, live, size=size)

    async def delete(self, pool: str, upload_id: str) -> None:
        """Cancel (a running fetch first) and remove an unfinished upload's files; of a complete
        one, only its record (never the volume)."""
        upload = await self.pool(pool)
        key = (upload.directory, upload_id)
        live = self._live.get(key)
        if live is not None and live.task is not None and not live.task.done():
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.task
        if live is not None and live.lock.locked():
            raise Conflict(f"upload {upload_id} is being written by another request: try again when it ends")
        record = await asyncio.to_thread(read_record, upload.directory, upload_id)
        if record is None and not await asyncio.to_thread(
            os.path.exists, part_path(upload.directory, upload_id)
        ):
            raise NotFound(f"no upload {upload_id} in storage pool {upload.name!r}")
        await asyncio.to_thread(remove_files, upload.directory, upload_id, record=True)
        self._live.pop(key, None)
        log.info(
            "upload %s in pool %s deleted (%s)", upload_id, pool, record.state if record else "no record"
        )

    # -- pieces ----------------------------------------------------------------------------
    async def append(
        self, pool: str, upload_id: str, offset: int, body: Readable, declared: int | None
    ) -> UploadStatus:
        """Write a piece (`body`, `declared` bytes if the request said) from `offset`, which must
        be the upload's offset. A body that ends early or drops keeps what was written; one
        that would pass the upload's length is refused, and nothing past the length is written."""
        upload = await self.pool(pool)
        live = self.live(upload, upload_id)
        if live.task is not None and not live.task.done():
            raise Conflict(f"upload {upload_id} is a fetch by the agent (fetching): it takes no pieces")
        if live.lock.locked():
            raise Conflict(f"upload {upload_id} is being written by another request")
        async with live.lock:
            try:
                record = await self._record(upload, upload_id)
            except NotFound:
                self._live.pop((upload.directory, upload_id), None)  # nothing to remember of it
                raise
            if record.state == "complete":
                raise Conflict(f"upload {upload_id} is already complete (volume {record.name!r})")
            if record.source_url is not None or record.length is None:
                raise Conflict(
                    f"upload {upload_id} is a fetch by the agent ({record.state}): it takes no pieces"
                )
            path = part_path(upload.directory, upload_id)
            try:
                fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError as err:
                raise Conflict(
                    f"upload {upload_id} lost its bytes ({path} is gone): delete it and begin again"
                ) from err
            try:
                return await self._append(upload, record, live, fd, offset, body, declared)
            finally:
                await asyncio.to_thread(os.close, fd)

    async def _ensure_hasher(self, upload: UploadPool, upload_id: str, live: LiveUpload, size: int) -> None:
        if live.hasher is None or live.hashed != size:
            live.hasher = None
            live.hasher = await asyncio.to_thread(hash_file, part_path(upload.directory, upload_id), size)
            live.hashed = size
            log.info("upload %s: digest rebuilt from its first %d bytes", upload_id, size)

    async def _append(
        self,
        upload: UploadPool,
        record: UploadRecord,
        live: LiveUpload,
        fd: int,
        offset: int,
        body: Readable,
        declared: int | None,
    ) -> UploadStatus:
        length = record.length
        assert length is not None
        size = (await asyncio.to_thread(os.fstat, fd)).st_size
        if offset != size:
            raise OffsetConflict(
                f"upload {record.id} is at offset {size}, not {offset}: send the bytes from {size}",
                offset=size,
            )
        if declared is not None and offset + declared > length:
            raise InvalidSpec(
                f"the piece ({declared} bytes from {offset}) goes past the upload's length ({length} bytes)"
            )
        await self._ensure_hasher(upload, record.id, live, size)
        what = f"upload {record.id} ({record.name!r})"
        writer = PartWriter(fd, live, upload, position=size, length=length, what=what)
        if size < length:
            await asyncio.to_thread(writer.room_left_for(size))
        try:
            problem = await self._receive(writer, body, length)
        finally:
            await writer.drain()
            if writer.position > size:
                record = record.model_copy(update={"updated_at": time.time()})
                try:
                    await asyncio.to_thread(write_record, upload.directory, record)
                except (AgentProblem, OSError) as err:  # its time only, for the expiry: not worth failing for
                    log.warning("upload %s: its record's time was not updated: %s", record.id, err)
        if problem is not None:
            raise problem
        if writer.position == length:
            record = await self._complete(upload, record, live, fd)
        return _status(upload.name, upload.directory, record, live)

    async def _receive(self, writer: PartWriter, body: Readable, length: int) -> AgentProblem | None:
        """Pieces of the body into the writer until the body ends; a body that would pass the
        length is refused (the problem is returned, as the bytes before it are kept)."""
        while True:
            piece, error = await read_piece(body, PIECE)
            end = writer.position + len(piece)
            if end > length:
                return InvalidSpec(
                    f"the body goes past the upload's length ({length} bytes): nothing past it was "
                    f"written; the upload is at offset {writer.position}"
                )
            if end == length and piece and error is None:
                # The last piece is written only once the body is seen to end with it.
                extra, error = await read_piece(body, 1)
                if extra:
                    return InvalidSpec(
                        f"the body goes past the upload's length ({length} bytes): nothing past it was "
                        f"written; the upload is at offset {writer.position}"
                    )
            if piece:
                await writer.add(piece)
            if error is not None:
                log.info(
                    "%s: the body ended early (%s): kept %d bytes", writer.what, type(error).__name__, end
                )
                return None
            if len(piece) < PIECE or end == length:
                return None

    async def _complete(
        self, upload: UploadPool, record: UploadRecord, live: LiveUpload, fd: int
    ) -> UploadRecord:
        """The whole is there: on disk for good, renamed to the volume's name, the pool told."""
        hasher = live.hasher
        assert hasher is not None
        digest = hasher.hexdigest()
        async with self._names_lock(upload.directory):
            final = await asyncio.to_thread(self._publish, upload, record, fd)
            record = record.model_copy(
                update={
                    "state": "complete",
                    "sha256": digest,
                    "path": final,
                    "updated_at": time.time(),
                    "error": None,
                }
            )
            await asyncio.to_thread(write_record, upload.directory, record)
            await asyncio.to_thread(remove_files, upload.directory, record.id, record=False)
        live.hasher = None
        log.info(
            "upload %s complete: volume %s of pool %s (sha256 %s)",
            record.id,
            record.name,
            upload.name,
            digest,
        )
        try:
            await self._conn.call(
                lambda c: refresh_pool_sync(c, upload.name), what=f"refreshing storage pool {upload.name!r}"
            )
        finally:
            self._changed()
        return record

    def _publish(self, upload: UploadPool, record: UploadRecord, fd: int) -> str:
        """Blocking: the .part made durable and given the volume's name (never over a volume of
        that name). A hard link is atomic and refuses a taken name; where the file system has
        none (some network ones), a rename after a check."""
        os.fsync(fd)
        os.fchmod(fd, 0o644)  # like an image copied in by hand; domains get their own labels from libvirt
        part = part_path(upload.directory, record.id)
        final = os.path.join(upload.directory, record.name)
        taken = Conflict(
            f"storage pool {upload.name!r} has had a volume {record.name!r} since the upload began: the "
            f"upload is kept; delete that volume and send the last piece again, or delete upload {record.id}"
        )
        try:
            os.link(part, final)
        except FileExistsError as err:
            if not os.path.samefile(part, final):  # the same file: published before the agent stopped
                raise taken from err
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if os.path.lexists(final):
                raise taken from err
            os.rename(part, final)
        dir_fd = os.open(upload.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    # -- fetches ---------------------------------------------------------------------------
    async def fetch(self, pool: str, request: FetchRequest) -> tuple[UploadStatus, bool]:
        """Begin fetching `request.url` into the pool in the background; returns the fetch and
        whether this call began it (the same id, name and URL again is the fetch as it stands)."""
        upload = await self.pool(pool)
        shown = shown_source(request.url)
        async with self._names_lock(upload.directory):
            existing = await self._existing(upload, request.id)
            if existing is not None:
                if (existing.name, existing.source_url) == (request.name, shown):
                    live = self._live.get((upload.directory, request.id))
                    return _status(pool, upload.directory, existing, live), False
                raise _id_taken(existing)
            record = await asyncio.to_thread(self._begin, upload, request.id, request.name, None, shown)
            live = self.live(upload, request.id)
            live.meter = RateMeter()
            live.task = asyncio.get_running_loop().create_task(
                run_fetch(upload, record, request, live, complete=self._complete)
            )
        log.info("fetch %s of %s into %s of pool %s begun", request.id, shown, request.name, pool)
        return _status(pool, upload.directory, record, live), True

    async def _existing(self, upload: UploadPool, upload_id: str) -> UploadRecord | None:
        try:
            return await self._record(upload, upload_id)
        except NotFound:
            return None

    # -- expiry ----------------------------------------------------------------------------
    async def sweep(self, *, now: float | None = None) -> list[str]:
        """Expire old uploads in every running directory pool; returns the ids removed."""
        pools = await self._conn.call(upload_pools_sync, what="listing storage pools for expired uploads")
        removed: list[str] = []
        when = time.time() if now is None else now
        for upload in pools:
            try:
                # With the names' lock: a fetch begun meanwhile is busy before the sweep reads its record.
                async with self._names_lock(upload.directory):
                    busy = self._busy(upload.directory)
                    gone = await asyncio.to_thread(
                        sweep_uploads, upload.directory, now=when, max_age=self.expiry_s, busy=busy
                    )
            except (OSError, AgentProblem) as err:
                log.warning("expired uploads of pool %s not swept: %s", upload.name, err)
                continue
            for upload_id in gone:
                self._live.pop((upload.directory, upload_id), None)
            removed += gone
        return removed

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except AgentProblem as err:
                log.warning("expired uploads not swept: %s", err.detail)
            await asyncio.sleep(SWEEP_EVERY_S)

    def start(self) -> None:
        """Sweep now and every SWEEP_EVERY_S."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        tasks: list[asyncio.Task[None]] = [live.task for live in self._live.values() if live.task is not None]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
