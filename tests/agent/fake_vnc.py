"""A small VNC server and a VNC client over a WebSocket, for the graphical console's tests and
its benchmark (bench/console_bench.py).

The server speaks RFB 3.8 with no authentication, records every client message it receives,
echoes key events back at once (keystroke echo) and answers a clipboard text `bulk N` with N
bytes as fast as it can (bulk throughput). What it sends after the handshake is not valid RFB:
the agent passes the server's bytes through untouched, and so does websockify.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import aiohttp

from agent.rfb import VERSION_38, ClientMessages

SERVER_INIT_NAME = b"fake-vnc"
BULK_CHUNK = 64 * 1024


def key_event(keysym: int, down: bool = True) -> bytes:
    return struct.pack(">BBHI", 4, int(down), 0, keysym)


def pointer_event(x: int, y: int, buttons: int = 0) -> bytes:
    return struct.pack(">BBHH", 5, buttons, x, y)


def cut_text(text: bytes) -> bytes:
    return struct.pack(">BxxxI", 6, len(text)) + text


def update_request(width: int = 64, height: int = 48, incremental: bool = False) -> bytes:
    return struct.pack(">BBHHHH", 3, int(incremental), 0, 0, width, height)


class FakeVncServer:
    def __init__(self, width: int = 64, height: int = 48) -> None:
        self.width, self.height = width, height
        self.received: list[bytes] = []  # client messages, whole, in arrival order
        self.shared_flags: list[int] = []  # each client's ClientInit
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for writer in list(self.writers):
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def server_init(self) -> bytes:
        pixel_format = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        head = struct.pack(">HH", self.width, self.height) + pixel_format
        return head + struct.pack(">I", len(SERVER_INIT_NAME)) + SERVER_INIT_NAME

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            writer.write(VERSION_38)
            await reader.readexactly(12)
            writer.write(b"\x01\x01")  # one security type: none
            await reader.readexactly(1)
            writer.write(b"\x00\x00\x00\x00")
            self.shared_flags.append((await reader.readexactly(1))[0])
            writer.write(self.server_init())
            await writer.drain()
            messages = ClientMessages()
            while data := await reader.read(65536):
                for kind, message in messages.feed(data):
                    self.received.append(message)
                    if kind == 4:
                        writer.write(message)  # the echo of a keystroke
                    elif kind == 6 and message[8:].startswith(b"bulk "):
                        await self._bulk(writer, int(message[13:]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _bulk(self, writer: asyncio.StreamWriter, size: int) -> None:
        chunk = b"\xa5" * BULK_CHUNK
        while size > 0:
            writer.write(chunk[: min(size, BULK_CHUNK)])
            size -= BULK_CHUNK
            await writer.drain()


class VncOverWebSocket:
    """The browser's side of a graphical console: RFB in binary frames, presence in text ones."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.buffer = bytearray()
        self.notices: list[dict[str, Any]] = []

    async def _more(self) -> None:
        """Read one frame: output into the buffer, a notice into the notices; ConnectionError
        with the close reason when the console closes."""
        msg = await self.ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            self.buffer += msg.data
        elif msg.type == aiohttp.WSMsgType.TEXT:
            self.notices.append(json.loads(msg.data))
        else:
            raise ConnectionError(str(msg.extra or ""))

    async def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._more()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def handshake(self) -> bytes:
        """Version 3.8, no authentication, shared; returns the ServerInit."""
        assert await self.read(12) == VERSION_38
        await self.ws.send_bytes(VERSION_38)
        count = (await self.read(1))[0]
        assert 1 in await self.read(count)
        await self.ws.send_bytes(b"\x01")
        assert await self.read(4) == b"\x00\x00\x00\x00"
        await self.ws.send_bytes(b"\x01")
        head = await self.read(24)
        (name_length,) = struct.unpack(">I", head[20:24])
        return head + await self.read(name_length)

    async def notice(self, wanted: Any = lambda _n: True, timeout: float = 10) -> dict[str, Any]:
        """The next presence notice (waiting for one) for which `wanted(notice)` holds."""
        async with asyncio.timeout(timeout):
            while True:
                while self.notices:
                    notice = self.notices.pop(0)
                    if wanted(notice):
                        return notice
                await self._more()

    async def closed(self, timeout: float = 10) -> str:
        """Read (keeping output) until the console closes; returns the close reason."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self._more()
                except ConnectionError as closed:
                    return str(closed)
