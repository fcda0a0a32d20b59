"""Binary frames to a viewer's WebSocket with one system call each: header and payload together.

aiohttp writes a large frame as two writes to the transport, the header and then the payload
(so as not to copy the payload to join them), which is two sends on the socket: two TCP
segments, and on the console's side a read woken for ten bytes. At a full-speed screen that is
thousands a second. Where nothing stands in between (plain TCP, no compression) and the
transport has nothing waiting to be sent, DirectFrames writes both with one writev(2) on the
socket instead, still without a copy. Whatever the kernel does not take goes to the transport,
in order, and is waited for as aiohttp would; anything else (TLS, permessage-deflate, a
transport with bytes waiting) is aiohttp's own send_bytes.

The socket is written only while the transport's buffer is empty, and never across an await, so
nothing aiohttp writes (pings, pongs, presence notices, a close) can land inside a frame.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Sequence

from aiohttp import web

OP_TEXT, OP_BINARY = 0x1, 0x2


def frame_header(opcode: int, length: int) -> bytes:
    """The header of a whole, unmasked (server) frame of `length` payload bytes (RFC 6455 5.2).
    Also the console's, for its frames to the browser (console.websocket_server)."""
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, length)
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def plain_socket_fd(transport: asyncio.BaseTransport | None) -> int:
    """The file descriptor under `transport` when bytes written to it go out as they are (a
    TCP or unix socket, no TLS); -1 otherwise."""
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


def write_now(
    fd: int, transport: asyncio.WriteTransport, pieces: Sequence[bytes | memoryview], *, owned: bool
) -> None:
    """`pieces` to the socket `fd` with one writev(2), the transport's buffer being empty (the
    caller checked: nothing may go ahead of what it holds). What the kernel does not take goes
    to the transport, in order, and is sent as it drains: copied first unless the pieces are
    `owned` (not views of a buffer about to be reused: a transport may keep what it is given).
    Raises OSError when the connection is broken."""
    try:
        sent = os.writev(fd, pieces)
    except (BlockingIOError, InterruptedError):
        sent = 0
    rest: list[bytes | memoryview] = []
    for piece in pieces:
        if sent >= len(piece):
            sent -= len(piece)
        else:
            rest.append(memoryview(piece)[sent:] if sent else piece)
            sent = 0
    if not owned:  # one copy of what is left, in one write
        rest = [b"".join(rest)] if rest else []
    for piece in rest:
        transport.write(piece)


class DirectFrames:
    """Sends binary messages on one prepared server WebSocket (see the module's docstring)."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._request = request
        self._transport: asyncio.Transport | None = None
        self._fd = plain_socket_fd(request.transport)
        if self._fd >= 0 and not ws.compress:  # compression is negotiated at prepare()
            self._transport = request.transport

    @property
    def direct(self) -> bool:
        """Whether frames may skip aiohttp's writer (plain TCP, no compression)."""
        return self._transport is not None

    async def send(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            await self._ws.send_bytes(data)
            return
        try:
            write_now(self._fd, transport, (frame_header(OP_BINARY, len(data)), data), owned=True)
        except OSError:
            # The connection is broken: the transport's own write meets the same error and
            # closes it the way it always does, and aiohttp raises what it always raises.
            await self._ws.send_bytes(data)
            return
        if transport.get_write_buffer_size():
            await self._request.writer.drain()  # waits only while the transport is over its limit
