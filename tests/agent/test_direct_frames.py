"""agent/direct_frames.py: binary frames written with one writev, against a real aiohttp server
and client. What must hold: every message arrives whole and in order with the text frames
aiohttp sends between them, also when the kernel takes only part of a frame; and TLS and
permessage-deflate go through aiohttp's own writer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent.direct_frames import OP_BINARY, OP_TEXT, DirectFrames, frame_header
from agent.identity import AgentIdentity

# Around each header-length boundary, and large ones that a small send buffer cuts.
SIZES = [1, 125, 126, 65535, 65536, 300_000, 3 * 1024 * 1024]


def test_frame_header_is_rfc_6455_for_each_length_form() -> None:
    assert frame_header(OP_BINARY, 5) == b"\x82\x05"
    assert frame_header(OP_TEXT, 5) == b"\x81\x05"
    assert frame_header(OP_BINARY, 126) == b"\x82\x7e\x00\x7e"
    assert frame_header(OP_BINARY, 65535) == b"\x82\x7e\xff\xff"
    assert frame_header(OP_BINARY, 65536) == b"\x82\x7f" + (65536).to_bytes(8, "big")


def payloads() -> list[bytes]:
    return [os.urandom(16) * (n // 16) + os.urandom(n % 16) for n in SIZES]


@contextlib.asynccontextmanager
async def running(
    route: Callable[[web.Request], Awaitable[web.WebSocketResponse]], context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, int]]:
    """A real aiohttp server with `route` at /ws; yields its URL and port. An AppRunner as the
    agent's own (agent/server.py), not aiohttp's TestServer: that one cancels a handler whose
    client has gone, where the agent's handler sees the send fail."""
    app = web.Application()
    app.router.add_get("/ws", route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{port}/ws", port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve(
    sent: list[bytes], seen: dict[str, object], *, sndbuf: int = 0, context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """A server whose one route sends `sent` through DirectFrames, a text frame after each."""

    async def route(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if sndbuf:  # the kernel then takes only part of every large frame
            sock = request.transport.get_extra_info("socket") if request.transport else None
            assert sock is not None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        frames = DirectFrames(request, ws)
        seen["direct"] = frames.direct
        for i, data in enumerate(sent):
            await frames.send(data)
            await ws.send_str(f"after {i}")
        await ws.close()
        return ws

    async with running(route, context) as (url, _port):
        yield url


def small_receive_buffer(addr_info: tuple[int, int, int, str, tuple[str, int]]) -> socket.socket:
    """A client socket that holds little unread, so that a sender not read from soon stalls."""
    family, kind, proto, _name, _address = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    return sock


async def receive_all(
    url: str, *, compress: int = 0, wait_s: float = 0.0, verify: bool = True, small_buffer: bool = False
) -> list[object]:
    """Every message the route sends, in order (after `wait_s` of not reading at all)."""
    got: list[object] = []
    connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer if small_buffer else None)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.ws_connect(
            url, compress=compress, max_msg_size=0, ssl=True if verify else False
        ) as ws:
            await asyncio.sleep(wait_s)
            async for msg in ws:
                assert msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), msg
                got.append(msg.data)
    return got


def expected(sent: list[bytes]) -> list[object]:
    out: list[object] = []
    for i, data in enumerate(sent):
        out += [data, f"after {i}"]
    return out


async def test_frames_arrive_whole_and_in_order_between_text_frames() -> None:
    sent, seen = payloads(), dict[str, object]()
    async with serve(sent, seen) as url:
        assert await receive_all(url) == expected(sent)
    assert seen["direct"] is True


async def test_frames_the_kernel_takes_in_part_are_finished_before_anything_else() -> None:
    # A small send buffer and a client that does not read at first: once the client's receive
    # buffer is full, frames are cut by the kernel, and the text frame after each (aiohttp's)
    # must still come after all of it, and the next direct frame after that text frame.
    sent, seen = payloads() + [os.urandom(1024 * 1024)] * 2, dict[str, object]()
    async with serve(sent, seen, sndbuf=16 * 1024) as url:
        assert await receive_all(url, wait_s=0.2, small_buffer=True) == expected(sent)
    assert seen["direct"] is True


@pytest.mark.parametrize("taken", [0, 1, 3, 10, 11, 65000])
async def test_each_place_a_frame_can_be_cut(monkeypatch: pytest.MonkeyPatch, taken: int) -> None:
    # The kernel taking exactly `taken` bytes of each writev (none: EAGAIN), in the header
    # (2, 4 or 10 bytes long) or in the payload: the rest must follow through the transport.
    def writev(fd: int, buffers: tuple[bytes, bytes]) -> int:
        if not taken:
            raise BlockingIOError
        return os.write(fd, b"".join(buffers)[:taken])

    monkeypatch.setattr(os, "writev", writev)  # the module calls os.writev: this is what it gets
    sent, seen = payloads(), dict[str, object]()
    async with serve(sent, seen) as url:
        assert await receive_all(url) == expected(sent)
    assert seen["direct"] is True


async def test_permessage_deflate_goes_through_aiohttp() -> None:
    sent, seen = payloads(), dict[str, object]()
    async with serve(sent, seen) as url:
        assert await receive_all(url, compress=15) == expected(sent)
    assert seen["direct"] is False


async def test_tls_goes_through_aiohttp(tmp_path: Path) -> None:
    cert = AgentIdentity(tmp_path / "state").ensure_certificate(names=["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert_path, cert.key_path)
    sent, seen = payloads(), dict[str, object]()
    async with serve(sent, seen, context=context) as url:
        assert await receive_all(url, verify=False) == expected(sent)
    assert seen["direct"] is False


def upgrade(port: int) -> socket.socket:
    """A bare client socket through the WebSocket upgrade (its answer read, nothing more)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


async def test_a_viewer_gone_mid_stream_ends_the_send_with_a_connection_error() -> None:
    ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def route(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        frames = DirectFrames(request, ws)
        try:
            for _ in range(100_000):  # 6.5 GB: far more than any socket buffer holds
                await frames.send(b"z" * 65536)
            ended.set_result(None)
        except ConnectionError as err:
            ended.set_result(err)
        return ws

    async with running(route) as (_url, port):
        sock = await asyncio.to_thread(upgrade, port)
        await asyncio.to_thread(sock.recv, 65536)  # the stream has begun
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, as a viewer's machine gone away
        err = await asyncio.wait_for(ended, 30)
        assert isinstance(err, ConnectionError), "went on sending after the viewer left"
