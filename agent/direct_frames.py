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


class DirectFrames:
    """Sends binary messages on one prepared server WebSocket (see the module's docstring)."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._request = request
        self._transport: asyncio.Transport | None = None
        self._fd = -1
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and transport is not None and transport.get_extra_info("sslcontext") is None:
            if not ws.compress:  # negotiated at prepare(): frames go out as they are
                self._transport, self._fd = transport, sock.fileno()

    @property
    def direct(self) -> bool:
        """Whether frames may skip aiohttp's writer (plain TCP, no compression)."""
        return self._transport is not None

    async def send(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            await self._ws.send_bytes(data)
            return
        header = frame_header(OP_BINARY, len(data))
        try:
            sent = os.writev(self._fd, (header, data))
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # The connection is broken: the transport's own write meets the same error and
            # closes it the way it always does, and aiohttp raises what it always raises.
            await self._ws.send_bytes(data)
            return
        if sent == len(header) + len(data):
            return
        if sent < len(header):
            transport.write(header[sent:])
            transport.write(data)
        else:
            transport.write(memoryview(data)[sent - len(header) :])
        await self._request.writer.drain()  # waits only while the transport is over its limit
