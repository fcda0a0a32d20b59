"""Fetches into a pool: the agent downloads a URL into an upload's files (agent/upload_files.py),
then the upload completes as one sent in pieces does (agent/uploads.py).

The URL comes from a console user, and the agent runs as root beside services that trust this
host, so a fetch is held to the network-install policy (agent/netinstall.py): every destination is
resolved once and checked (loopback, link-local, this host's addresses, `--netinstall-deny`;
`--netinstall-allow` lets an address through), the connection goes to exactly the addresses
checked, redirects are followed one checked hop at a time, no proxy from the environment is used,
and no error ever carries what a server answered.

- http, https: through netinstall's CheckedFetcher.
- ftp: ftplib in worker threads, connected to the checked address; its passive data connection
  goes to that same address (ftplib ignores the address a server's PASV answer names, and EPSV
  names none), never one the server picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp
from yarl import URL

from agent.errors import AgentProblem, InvalidSpec
from agent.netinstall import CheckedFetcher, NetinstallPolicy, checked_fetcher, shown_url
from agent.protocol import FetchRequest
from agent.upload_files import (
    PIECE,
    LiveUpload,
    PartWriter,
    UploadPool,
    UploadRecord,
    check_room,
    part_path,
    read_piece,
    read_record,
    remove_files,
    write_record,
)

log = logging.getLogger(__name__)

FIELD = "url"  # what a fetch's errors name
RECORD_EVERY_S = 5.0  # a running fetch's record is rewritten this often (its updated_at)


def shown_source(url: str) -> str:
    """A fetch's URL as its status and errors show it: no credentials, no query."""
    return shown_url(URL(url))


class Source(Protocol):
    """An opened download: its size if the server said, the URL it came from (after
    redirects), its bytes a read at a time (b"" at the end)."""

    length: int | None
    url: URL

    async def read(self, n: int = -1) -> bytes: ...

    async def close(self) -> None: ...


class HttpSource:
    def __init__(self, fetcher: CheckedFetcher, response: aiohttp.ClientResponse, url: URL) -> None:
        self._fetcher = fetcher
        self._response = response
        self.url = url
        self.length = response.content_length

    async def read(self, n: int = -1) -> bytes:
        try:
            return await self._response.content.read(n)
        except aiohttp.ClientError as err:
            raise InvalidSpec(
                f"{FIELD}: cannot fetch {shown_url(self.url)}: {self._fetcher.why(err)}"
            ) from err

    async def close(self) -> None:
        self._response.release()


def _ftp_why(err: BaseException, policy: NetinstallPolicy) -> str:
    """What went wrong with an FTP server, in our words: its reply code at most, never its text."""
    if isinstance(err, TimeoutError):
        return f"the server sent nothing for {policy.idle_timeout_s:g} s"
    if isinstance(err, ftplib.Error):
        code = str(err)[:3]
        return f"the FTP server refused ({code})" if code.isdigit() else "the FTP server answered out of turn"
    if isinstance(err, EOFError):
        return "the server closed the connection"
    if isinstance(err, OSError):
        return f"cannot connect ({err.strerror or type(err).__name__})"
    return f"the exchange failed ({type(err).__name__})"


_FTP_ERRORS: tuple[type[BaseException], ...] = (*ftplib.all_errors, ValueError)


class FtpSource:
    """A file over FTP (anonymous unless the URL names a user), in binary mode, passive."""

    def __init__(
        self, ftp: ftplib.FTP, data: socket.socket, url: URL, length: int | None, policy: NetinstallPolicy
    ):
        self._ftp = ftp
        self._data = data
        self._policy = policy
        self.url = url
        self.length = length
        self._ended = False

    @classmethod
    async def open(cls, fetcher: CheckedFetcher, url: URL) -> FtpSource:
        policy = fetcher.policy
        results = await fetcher.check(FIELD, url, schemes=("ftp",))
        path = url.path
        if path in ("", "/") or path.endswith("/") or any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
            raise InvalidSpec(f"{FIELD}: {shown_url(url)} names no file")
        address, port = results[0]["host"], results[0]["port"]

        def connect() -> tuple[ftplib.FTP, socket.socket, int | None]:
            ftp = ftplib.FTP(timeout=policy.connect_timeout_s)  # noqa: S321 -- public mirrors still serve FTP
            try:
                ftp.connect(address, port)
                ftp.timeout = policy.idle_timeout_s  # the data connection's, from here on
                if ftp.sock is not None:
                    ftp.sock.settimeout(policy.idle_timeout_s)
                ftp.login(url.user or "anonymous", url.password or "anonymous@")
                ftp.voidcmd("TYPE I")
                size = None
                with contextlib.suppress(ftplib.error_perm, ftplib.error_reply, ValueError):
                    size = ftp.size(path)
                data = ftp.transfercmd(f"RETR {path}")
                data.settimeout(policy.idle_timeout_s)
            except BaseException:
                ftp.close()
                raise
            return ftp, data, size

        try:
            ftp, data, size = await asyncio.to_thread(connect)
        except _FTP_ERRORS as err:
            raise InvalidSpec(f"{FIELD}: cannot fetch {shown_url(url)}: {_ftp_why(err, policy)}") from err
        return cls(ftp, data, url, size, policy)

    async def read(self, n: int = -1) -> bytes:
        if self._ended:
            return b""
        try:
            data = await asyncio.to_thread(self._data.recv, n if n > 0 else 1024 * 1024)
            if not data:
                self._ended = True
                self._data.close()
                await asyncio.to_thread(self._ftp.voidresp)  # 226: the whole file was sent
        except _FTP_ERRORS as err:
            why = _ftp_why(err, self._policy)
            if isinstance(err, ftplib.Error):
                why = "the server broke off the transfer"
            raise InvalidSpec(f"{FIELD}: cannot fetch {shown_url(self.url)}: {why}") from err
        return data

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self._data.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in its thread
        self._data.close()
        self._ftp.close()


async def open_source(fetcher: CheckedFetcher, url: URL) -> Source:
    """Open `url` for reading, every destination checked first; InvalidSpec (or its refusal
    subclass) says why not, in the agent's words."""
    if url.scheme == "ftp":
        return await FtpSource.open(fetcher, url)
    response, final = await fetcher.open(FIELD, url)
    if response.status != 200:
        response.release()
        raise InvalidSpec(f"{FIELD}: {shown_url(final)} answered HTTP {response.status}")
    return HttpSource(fetcher, response, final)


# -- the fetch ---------------------------------------------------------------------------------
Complete = Callable[[UploadPool, UploadRecord, LiveUpload, int], Awaitable[UploadRecord]]


async def run_fetch(
    upload: UploadPool, record: UploadRecord, request: FetchRequest, live: LiveUpload, *, complete: Complete
) -> None:
    """The background task of one fetch: the bytes into the upload's .part, then `complete` (as
    an upload completes). A failure fails the record (with why, for people) and removes the bytes.
    Cancelled (a delete, the agent stopping), it leaves the files as they are: a delete removes
    them, a restarted agent fails the fetch."""
    async with live.lock:
        try:
            await _fetch_into(upload, record, request, live, complete)
        except AgentProblem as err:
            await _fail(upload, record, live, err.detail)
        except OSError as err:
            await _fail(upload, record, live, f"writing fetch {record.id}: {err.strerror or err}")


async def _fail(upload: UploadPool, record: UploadRecord, live: LiveUpload, why: str) -> None:
    live.hasher = None
    current = await asyncio.to_thread(read_record, upload.directory, record.id) or record
    failed = current.model_copy(update={"state": "failed", "error": why, "updated_at": time.time()})
    await asyncio.to_thread(remove_files, upload.directory, record.id, record=False)
    await asyncio.to_thread(write_record, upload.directory, failed)
    log.warning("fetch %s into %s of pool %s failed: %s", record.id, record.name, upload.name, why)


async def _fetch_into(
    upload: UploadPool, record: UploadRecord, request: FetchRequest, live: LiveUpload, complete: Complete
) -> None:
    what = f"fetch {record.id} ({record.name!r})"
    path = part_path(upload.directory, record.id)
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        async with checked_fetcher() as fetcher:
            source = await open_source(fetcher, URL(request.url))
            try:
                record, size = await _download(upload, record, request, live, source, fd, what)
            finally:
                await source.close()
        hasher = live.hasher
        assert hasher is not None
        digest = hasher.hexdigest()
        if request.sha256 is not None and digest != request.sha256:
            raise InvalidSpec(
                f"sha256: {shown_url(source.url)} has the SHA-256 {digest}, not the {request.sha256} "
                "expected: its bytes were removed"
            )
        record = record.model_copy(update={"length": size})
        await complete(upload, record, live, fd)
    finally:
        await asyncio.to_thread(os.close, fd)


async def _download(
    upload: UploadPool,
    record: UploadRecord,
    request: FetchRequest,
    live: LiveUpload,
    source: Source,
    fd: int,
    what: str,
) -> tuple[UploadRecord, int]:
    """The source's bytes into the .part, hashed on the way; returns the record (with the length,
    once the server said it) and the size."""
    shown, cap, length = shown_url(source.url), request.max_bytes, source.length
    too_large = f"{FIELD}: {shown} is larger than max_bytes ({cap} bytes)"
    if length is not None:
        if length > cap:
            raise InvalidSpec(too_large)
        record = record.model_copy(update={"length": length, "updated_at": time.time()})
        await asyncio.to_thread(write_record, upload.directory, record)
        await asyncio.to_thread(check_room, upload.directory, upload.name, length, what)
    live.hasher, live.hashed = hashlib.sha256(), 0
    writer = PartWriter(fd, live, upload, position=0, length=length, what=what)
    saved = time.monotonic()
    try:
        while True:
            piece, error = await read_piece(source, PIECE)
            if error is not None:
                stalled = isinstance(error, TimeoutError)
                raise InvalidSpec(
                    f"{FIELD}: cannot fetch {shown}: "
                    + (
                        "the server sent nothing for a while"
                        if stalled
                        else "the server broke off the transfer"
                    )
                )
            if not piece:
                break
            end = writer.position + len(piece)
            if end > cap:
                raise InvalidSpec(too_large)
            if length is not None and end > length:
                raise InvalidSpec(f"{FIELD}: {shown} sent more than the {length} bytes it announced")
            await writer.add(piece)
            if live.meter is not None:
                live.meter.add(len(piece))
            if time.monotonic() - saved > RECORD_EVERY_S:  # the record's updated_at follows the writes
                saved = time.monotonic()
                record = record.model_copy(update={"updated_at": time.time()})
                await asyncio.to_thread(write_record, upload.directory, record)
    finally:
        await writer.drain()
    size = writer.position
    if size == 0:
        raise InvalidSpec(f"{FIELD}: {shown} is empty")
    if length is not None and size < length:
        raise InvalidSpec(f"{FIELD}: {shown} ended after {size} of its {length} bytes")
    return record, size
