"""The console's end of an agent console socket: a WebSocket client made for console bytes.

`AgentClient.open_console` opens one per browser console. It speaks RFC 6455 as a client
(masked frames out, the upgrade with the console's secret, the agent's TLS certificate
pinned), and it is built for the one thing the console does with it, passing bytes on:

- The kernel reads straight into one buffer (an asyncio BufferedProtocol; one buffer per
  thread, shared by every pipe, since each read is parsed before the next), and the binary
  payload of each read leaves it as one bytes object, whatever frames it came in: console
  output is a byte stream (terminal bytes, the RFB protocol), and where it is cut does not
  matter. A general-purpose client (aiohttp's) copies every byte three more times on the way:
  out of the event loop's read buffer, into a fragment, then joining fragments into a whole
  frame; and it would keep a buffer per console.
- Text frames (the agent's presence notices) and control frames are whole, as usual.

What the console needs of it is what aiohttp's ClientWebSocketResponse offered: `receive()` and
`async for` give aiohttp WSMessage tuples (BINARY, TEXT, then CLOSE with the code and reason,
then CLOSED), `send_bytes`, `send_str`, `close`, `closed`, `close_code` and `exception()`.
And one thing more: `attach(sink)` hands it the browser's socket (console.websocket_server), and
from then on each read's binary payload is written there as one frame, from the read buffer
itself where the browser's socket takes it at once (else copied once, as a message would be),
with no task, queue or ASGI event between: the agent's socket is read only while the browser's
has room.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import os
import ssl
import struct
import sys
import threading
from collections.abc import Callable
from typing import Protocol, cast
from urllib.parse import unquote, urlsplit

from aiohttp import WSCloseCode, WSMessage, WSMsgType

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, 1.3
_READ_SIZE = 256 * 1024  # what the kernel may hand over in one read
_MAX_HEADERS = 64 * 1024  # of the agent's answer to the upgrade
_MAX_TEXT = 1024 * 1024  # a text or control message, whole
_PAUSE_ABOVE = 2 * _READ_SIZE  # received bytes waiting for the console: stop reading the socket
_RESUME_BELOW = _READ_SIZE // 2
# This long without a byte from the agent, it is pinged; as long again without an answer, it is
# gone. (The agent pings too, but only a console that itself sends nothing: one whose user
# types into a hung guest would never hear from it.)
_SILENCE_S = 30.0

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA

_CLOSED = WSMessage(WSMsgType.CLOSED, None, None)


_threads = threading.local()


def _read_buffer() -> memoryview:
    """This thread's read buffer (reads are parsed at once: every pipe of the thread shares it)."""
    view: memoryview | None = getattr(_threads, "read_buffer", None)
    if view is None:
        view = _threads.read_buffer = memoryview(bytearray(_READ_SIZE))
    return view


class BrowserSink(Protocol):
    """The browser's socket, for an attached pipe to write whole frames to
    (console.websocket_server.FrameSink)."""

    paused: bool  # the browser's socket is full: stop reading from the agent
    on_writable: Callable[[], None] | None  # it drained, or was lost

    @property
    def open(self) -> bool: ...

    def write(self, opcode: int, payload: bytes) -> None: ...

    def write_pieces(self, opcode: int, pieces: list[memoryview], length: int) -> None: ...


class PipeRefused(Exception):
    """The agent answered the upgrade with an error: `status` and its Domus-Problem detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class PipeFailed(ConnectionError):
    """The connection broke, or the agent broke the protocol."""


class IdentityMismatch(Exception):
    """The agent's certificate is not the pinned one (sha256 fingerprints, lowercase hex)."""

    def __init__(self, *, expected: str, got: str) -> None:
        super().__init__(f"certificate {got} is not the pinned {expected}")
        self.expected = expected
        self.got = got


def _mask(data: bytes, key: bytes) -> bytes:
    """RFC 6455 masking, as one big-integer XOR (C speed, no per-byte Python)."""
    n = len(data)
    repeated = key * (n // 4) + key[: n % 4]
    masked = int.from_bytes(data, sys.byteorder) ^ int.from_bytes(repeated, sys.byteorder)
    return masked.to_bytes(n, sys.byteorder)


def _frame(opcode: int, payload: bytes) -> bytes:
    """A whole, masked client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return header + key + _mask(payload, key)


class ConsolePipe(asyncio.BufferedProtocol):
    """One console's connection to the agent: the upgrade, then frames (see the module's
    docstring); `open_pipe` makes one."""

    def __init__(self, request: bytes, key: bytes) -> None:
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID, usedforsecurity=False).digest())
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = self._loop.create_future()
        # While a read is parsed: the thread's buffer, and what of it is still to parse.
        self._view = _read_buffer()
        self._start = self._end = 0
        self._tail = b""  # the unparsed end of the last read (a frame header cut in two)
        self._pieces: list[memoryview] = []  # the read's binary payload, until it leaves
        self._handshake = True
        # The frame being read: whether its header has been, its opcode, whether it is its
        # message's last, and how much of its payload is still to come.
        self._in_frame = self._fin = False
        self._opcode = self._left = 0
        self._message_opcode = 0  # text or binary: of the message the frame belongs to
        self._text = bytearray()  # a text message, until it is whole
        self._control_payload = bytearray()  # a control frame's, until it is whole
        self._messages: collections.deque[WSMessage] = collections.deque()
        self._queued = 0  # bytes in _messages
        self._reading_paused = False  # the agent's socket is not read: because
        self._queue_full = False  # too much waits for `receive` (from _PAUSE_ABOVE to _RESUME_BELOW),
        self._sink: BrowserSink | None = None
        self._sink_full = False  # or the attached sink's socket was full at the last write
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._close_sent = False
        self._heard = True  # anything arrived since the last silence check
        self._pinged = False  # and if not, whether the agent was pinged at the last one
        self._silence: asyncio.TimerHandle | None = None
        self.closed = False
        self.close_code: int | None = None
        self._exception: BaseException | None = None

    # -- the connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def send_request(self) -> None:
        """The upgrade request; the caller has checked who it is talking to first."""
        assert self.transport is not None
        self.transport.write(self._request)
        self._request = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._silence is not None:
            self._silence.cancel()
        if not self.upgraded.done():
            self.upgraded.set_exception(PipeFailed(f"the agent closed the connection: {exc or 'no answer'}"))
        if not self.closed:
            self.closed = True
            if self.close_code is None:  # no close frame: the connection broke
                self.close_code = WSCloseCode.ABNORMAL_CLOSURE
                self._exception = exc or PipeFailed("the agent closed the connection without a close frame")
            self._push(_CLOSED)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        # What the last read left unparsed is at most a frame header, or part of the agent's
        # answer to the upgrade (under _MAX_HEADERS): it goes first.
        self._view = view = _read_buffer()
        tail = len(self._tail)
        view[:tail] = self._tail
        return view[tail:]

    def buffer_updated(self, nbytes: int) -> None:
        self._start, self._end = 0, len(self._tail) + nbytes
        self._heard = True
        try:
            if self._handshake:
                self._read_answer()
            if not self._handshake:
                self._read_frames()
        except (PipeFailed, PipeRefused) as err:
            if not self.upgraded.done():
                self.upgraded.set_exception(err)
            self._pieces.clear()
            self._fail(err)
        else:
            self._tail = bytes(self._view[self._start : self._end])
            self._flush()

    def _flush(self) -> None:
        """The binary payload read so far leaves the shared buffer: as one frame to the
        attached sink, or one message for `receive`."""
        if self._pieces:
            pieces, self._pieces = self._pieces, []
            sink = self._sink
            if sink is not None and sink.open:
                sink.write_pieces(_OP_BINARY, pieces, sum(len(piece) for piece in pieces))
                self._after_sink_write(sink)
                return
            data = bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)
            self._push(WSMessage(WSMsgType.BINARY, data, None))

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost says the rest

    # -- the upgrade ---------------------------------------------------------------------------
    def _read_answer(self) -> None:
        data = self._view[self._start : self._end]
        end = bytes(data).find(b"\r\n\r\n")
        if end < 0:
            if len(data) > _MAX_HEADERS:
                raise PipeFailed("the agent's answer to the upgrade is too long")
            return
        head = bytes(data[:end]).decode("latin-1")
        self._start += end + 4
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise PipeFailed(f"the agent answered the upgrade with {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 101:
            detail = unquote(headers.get("domus-problem", "")) or (parts[2] if len(parts) > 2 else "")
            raise PipeRefused(status, detail or f"HTTP {status}")
        if headers.get("upgrade", "").lower() != "websocket" or (
            headers.get("sec-websocket-accept", "").encode() != self._accept
        ):
            raise PipeFailed("the agent's answer to the upgrade is not a WebSocket one")
        self._handshake = False
        self.upgraded.set_result(None)
        self._silence = self._loop.call_later(_SILENCE_S, self._check_silence)

    # -- reading frames ------------------------------------------------------------------------
    def _read_frames(self) -> None:
        view = self._view
        while self._start < self._end or (self._in_frame and self._left == 0):
            if not self._in_frame and not self._read_header():
                return
            take = min(self._left, self._end - self._start)
            piece = view[self._start : self._start + take]
            self._start += take
            self._left -= take
            if self._opcode >= _OP_CLOSE:
                self._control_payload += piece
            elif self._message_opcode == _OP_BINARY:
                if take:
                    self._pieces.append(piece)
            else:
                self._text += piece
                if len(self._text) > _MAX_TEXT:
                    raise PipeFailed("the agent sent a text message over 1 MiB")
            if self._left == 0:
                self._frame_done()
                if self.closed:
                    return

    def _read_header(self) -> bool:
        """Read the next frame's header, if it is all there."""
        view, at = self._view, self._start
        if self._end - at < 2:
            return False
        first, second = view[at], view[at + 1]
        if second & 0x80:
            raise PipeFailed("the agent sent a masked frame")
        if first & 0x70:
            raise PipeFailed("the agent sent a frame with reserved bits set (no extension was agreed)")
        length, at = second & 0x7F, at + 2
        if length == 126:
            if self._end - at < 2:
                return False
            (length,) = struct.unpack_from("!H", view, at)
            at += 2
        elif length == 127:
            if self._end - at < 8:
                return False
            (length,) = struct.unpack_from("!Q", view, at)
            at += 8
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        if opcode >= _OP_CLOSE:
            if not fin or length > 125:
                raise PipeFailed("the agent sent a fragmented or long control frame")
        elif opcode == _OP_CONTINUATION:
            if not self._message_opcode:
                raise PipeFailed("the agent continued a message it had not begun")
        elif opcode in (_OP_TEXT, _OP_BINARY):
            if self._message_opcode:
                raise PipeFailed("the agent began a message inside another")
            self._message_opcode = opcode
        else:
            raise PipeFailed(f"the agent sent a frame of unknown opcode {opcode}")
        self._start, self._opcode, self._fin, self._left = at, opcode, fin, length
        self._in_frame = True
        return True

    def _frame_done(self) -> None:
        opcode, fin = self._opcode, self._fin
        self._in_frame = False
        if opcode >= _OP_CLOSE:  # it may have come between the fragments of a message
            payload, self._control_payload = bytes(self._control_payload), bytearray()
            self._control(opcode, payload)
            return
        if not fin:
            return
        if self._message_opcode == _OP_TEXT:
            try:
                text = self._text.decode()
            except UnicodeDecodeError as err:
                raise PipeFailed("the agent sent text that is not UTF-8") from err
            self._text = bytearray()
            self._flush()  # what came before it, first
            sink = self._sink
            if sink is not None and sink.open:
                sink.write(_OP_TEXT, text.encode())
                self._after_sink_write(sink)
            else:
                self._push(WSMessage(WSMsgType.TEXT, text, None))
        self._message_opcode = 0

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _OP_PING:
            self._write(_frame(_OP_PONG, payload))
        elif opcode == _OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else WSCloseCode.OK
            reason = payload[2:].decode(errors="replace")
            self.close_code = code
            self._flush()
            if not self._close_sent:
                self._close_sent = True
                self._write(_frame(_OP_CLOSE, payload[:2]))
            self.closed = True
            self._push(WSMessage(WSMsgType.CLOSE, code, reason))
            self._push(_CLOSED)
            if self.transport is not None:
                self.transport.close()

    def _check_silence(self) -> None:
        if self.closed:
            return
        if self._heard:
            self._heard = self._pinged = False
        elif not self._pinged:
            self._pinged = True
            self._write(_frame(_OP_PING, b"domus"))
        else:
            self._fail(PipeFailed(f"the agent answered nothing for {2 * _SILENCE_S:.0f} s"))
            return
        self._silence = self._loop.call_later(_SILENCE_S, self._check_silence)

    def _fail(self, err: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self._exception = err
        self.close_code = WSCloseCode.PROTOCOL_ERROR if isinstance(err, PipeFailed) else None
        self._push(_CLOSED)
        if self.transport is not None:
            self.transport.abort()

    # -- the console's side --------------------------------------------------------------------
    def attach(self, sink: BrowserSink) -> None:
        """From now on binary and text messages go straight to `sink`, as frames, while it is
        open (what is queued first, in order); `receive` still gives the close, and whatever
        comes once the sink has closed."""
        self._sink = sink
        sink.on_writable = self._sink_writable
        while self._messages and sink.open:
            message = self._messages[0]
            if message.type == WSMsgType.BINARY:
                sink.write(_OP_BINARY, message.data)
                self._queued -= len(message.data)
            elif message.type == WSMsgType.TEXT:
                sink.write(_OP_TEXT, message.data.encode())
            else:
                break
            self._messages.popleft()
        if self._queued < _RESUME_BELOW:
            self._queue_full = False
        self._after_sink_write(sink)

    def _after_sink_write(self, sink: BrowserSink) -> None:
        self._sink_full = sink.paused
        self._set_reading()

    def _sink_writable(self) -> None:
        self._sink_full = False
        self._set_reading()

    def _set_reading(self) -> None:
        """Read from the agent unless too much waits for the console or its browser."""
        if self.transport is None:
            return
        paused = self._sink_full or self._queue_full
        if paused != self._reading_paused:
            self._reading_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _push(self, message: WSMessage) -> None:
        self._messages.append(message)
        if message.type == WSMsgType.BINARY:
            self._queued += len(message.data)
            if self._queued > _PAUSE_ABOVE and not self._queue_full:
                self._queue_full = True
                self._set_reading()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self) -> WSMessage:
        while not self._messages:
            if self.closed:  # closed by this side
                return _CLOSED
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._messages[0] if self._messages[0] is _CLOSED else self._messages.popleft()
        if message.type == WSMsgType.BINARY:
            self._queued -= len(message.data)
            if self._queue_full and self._queued < _RESUME_BELOW:
                self._queue_full = False
                self._set_reading()
        return message

    def __aiter__(self) -> ConsolePipe:
        return self

    async def __anext__(self) -> WSMessage:
        message = await self.receive()
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
            raise StopAsyncIteration
        return message

    def exception(self) -> BaseException | None:
        return self._exception

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def _send(self, opcode: int, payload: bytes) -> None:
        if self.closed or self._close_sent or self.transport is None or self.transport.is_closing():
            raise PipeFailed("the console socket to the agent is closed")
        self.transport.write(_frame(opcode, payload))
        if self._writing_paused:
            self._drained = self._loop.create_future()
            await self._drained

    async def send_bytes(self, data: bytes) -> None:
        await self._send(_OP_BINARY, data)

    async def send_str(self, data: str) -> None:
        await self._send(_OP_TEXT, data.encode())

    async def close(self, code: int = WSCloseCode.OK) -> None:
        """Say goodbye and let go (the agent needs nothing more from this side)."""
        if not self._close_sent and not self.closed:
            self._close_sent = True
            self._write(_frame(_OP_CLOSE, struct.pack("!H", code)))
        self.closed = True
        if self._silence is not None:
            self._silence.cancel()
        if self.transport is not None:
            self.transport.close()  # after what is buffered has gone out


async def open_pipe(
    url: str,
    headers: dict[str, str],
    *,
    ssl_context: ssl.SSLContext | None,
    fingerprint: str = "",
    timeout: float = 30.0,
) -> ConsolePipe:
    """Connect to the agent's console socket at `url` (http/https) and upgrade.

    With `fingerprint` (sha256 of the agent's certificate, lowercase hex), the certificate is
    checked against it before a byte of the request is sent (`ssl_context` then must not
    verify on its own). Raises PipeRefused (the agent's answer), IdentityMismatch, PipeFailed,
    OSError (ssl.SSLError among them) or TimeoutError."""
    parts = urlsplit(url)
    tls = parts.scheme in ("https", "wss")
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    key = base64.b64encode(os.urandom(16))
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        transport, pipe = await loop.create_connection(
            lambda: ConsolePipe(request, key),
            host,
            port,
            ssl=(ssl_context or ssl.create_default_context()) if tls else None,
            server_hostname=host if tls else None,
        )
        try:
            if tls and fingerprint:
                der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
                got = hashlib.sha256(der).hexdigest()
                if got != fingerprint:
                    raise IdentityMismatch(expected=fingerprint, got=got)
            pipe.send_request()
            await pipe.upgraded
        except BaseException:
            pipe.upgraded.cancel()  # nobody waits for it any more
            transport.abort()
            raise
    return pipe
