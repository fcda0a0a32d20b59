"""agent.console_pipe, the console's WebSocket client for console bytes: against aiohttp's
WebSocket server (what the agent runs), against a raw peer for what aiohttp would never send,
and over TLS to a real agent with its certificate pinned."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestServer

from agent import console_pipe
from agent.client import AgentClient, AgentIdentityChanged, AgentNotFound, AgentUnreachable, _unverified_tls
from agent.console_pipe import ConsolePipe, PipeFailed, PipeRefused, open_pipe
from tests.agent.conftest import RunningAgent, launch_agent, stop_agent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def aiohttp_peer(handler: Handler) -> AsyncIterator[str]:
    """An aiohttp server answering /pipe with `handler`; yields its URL."""
    app = web.Application()
    app.router.add_get("/pipe", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("/pipe"))
    finally:
        await server.close()


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False) -> bytes:
    """A frame as a server sends it (unmasked), or masked to break the rules."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n | (0x80 if mask else 0))
    else:
        header = struct.pack("!BBQ", first, 127 | (0x80 if mask else 0), n)
    return header + (b"\0\0\0\0" if mask else b"") + payload


def client_payloads(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, unmasked payload) of each whole client frame in `data`."""
    out, at = [], 0
    while at + 6 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        assert data[at + 1] & 0x80, "a client frame must be masked"
        at += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, at)
            at += 2
        key = data[at : at + 4]
        at += 4
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[at : at + length]))
        out.append((opcode, payload))
        at += length
    return out


def _accept(request_head: bytes) -> bytes:
    """The Sec-WebSocket-Accept for the key in a request's head (RFC 6455, 4.2.2)."""
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request_head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


@asynccontextmanager
async def raw_peer(
    frames: bytes, *, answer: bytes | None = None, keep_open: float = 5.0
) -> AsyncIterator[tuple[str, bytearray]]:
    """A peer that upgrades (or answers `answer` instead), writes `frames`, and records what
    the client sends after the upgrade; yields its URL and that record."""
    received = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        accept = _accept(head)
        writer.write(
            answer
            or b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: "
            + accept
            + b"\r\n\r\n"
            + frames
        )
        await writer.drain()
        try:
            async with asyncio.timeout(keep_open):
                while data := await reader.read(65536):
                    received.extend(data)
        except TimeoutError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/pipe", received
    finally:
        server.close()


async def _rest(pipe: ConsolePipe) -> tuple[bytes, list[str], list[tuple[Any, Any, Any]]]:
    """Everything until the end: the binary bytes, the texts, and how it ended."""
    data, texts, ends = b"", [], []
    async with asyncio.timeout(10):
        while True:
            msg = await pipe.receive()
            if msg.type == WSMsgType.BINARY:
                data += msg.data
            elif msg.type == WSMsgType.TEXT:
                texts.append(msg.data)
            else:
                ends.append((msg.type, msg.data, msg.extra))
                if msg.type == WSMsgType.CLOSED:
                    return data, texts, ends


async def test_bytes_and_text_both_ways_then_the_agent_closes_with_why() -> None:
    got: list[object] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        got.append(request.headers["Authorization"])
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        got.append(await ws.receive_bytes())
        got.append(await ws.receive_str())
        await ws.send_bytes(b"\x00" * 300_000)  # a 64-bit length
        await ws.send_str('{"type": "presence"}')
        await ws.send_bytes(b"tail")
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"domain stopped")
        return ws

    async with aiohttp_peer(handler) as url:
        pipe = await open_pipe(url, {"Authorization": "Bearer s3cret"}, ssl_context=None)
        await pipe.send_bytes(b"\x04\x01" + b"k" * 200)  # a 16-bit length
        await pipe.send_str("take-control, héllo")
        data, texts, ends = await _rest(pipe)
    assert got == ["Bearer s3cret", b"\x04\x01" + b"k" * 200, "take-control, héllo"]
    assert data == b"\x00" * 300_000 + b"tail"
    assert texts == ['{"type": "presence"}']
    assert ends == [(WSMsgType.CLOSE, 1001, "domain stopped"), (WSMsgType.CLOSED, None, None)]
    assert pipe.closed and pipe.close_code == 1001 and pipe.exception() is None
    assert (await pipe.receive()).type == WSMsgType.CLOSED  # and so on, as aiohttp does


async def test_binary_is_a_byte_stream_and_text_keeps_its_place_in_it() -> None:
    """Binary frames may be cut or joined wherever the reads fell; what came before a text
    message is delivered before it."""
    frames = (
        server_frame(0x2, b"ab")
        + server_frame(0x2, b"cd", fin=False)
        + server_frame(0x9, b"ping!")  # a control frame between the fragments of a message
        + server_frame(0x0, b"ef")
        + server_frame(0x1, b"one", fin=False)
        + server_frame(0x0, b" two")
        + server_frame(0x2, b"")
        + server_frame(0x2, b"gh" * 70_000)
        + server_frame(0x8, struct.pack("!H", 1000) + b"bye")
    )
    async with raw_peer(frames, keep_open=0.5) as (url, received):
        pipe = await open_pipe(url, {}, ssl_context=None)
        order: list[object] = []
        async for msg in pipe:
            if msg.type == WSMsgType.TEXT:
                order.append(msg.data)
            elif order and isinstance(order[-1], bytes):
                order[-1] += msg.data
            else:
                order.append(msg.data)
        await asyncio.sleep(0.2)
    assert order == [b"abcdef", "one two", b"gh" * 70_000]
    assert pipe.close_code == 1000
    # The ping was answered with its payload, and the close with a close.
    assert client_payloads(bytes(received)) == [(0xA, b"ping!"), (0x8, struct.pack("!H", 1000))]


async def test_a_frame_header_cut_between_reads_is_read_whole() -> None:
    """The peer writes its frames a byte at a time: every header arrives in pieces."""

    frames = server_frame(0x2, b"x" * 70_000) + server_frame(0x1, b"notice") + server_frame(0x8, b"\x03\xe8")

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        accept = _accept(head)
        answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + accept
        for i in range(len(answer)):
            writer.write(answer[i : i + 1])
            await writer.drain()
        writer.write(b"\r\n\r\n")
        for i in range(0, 20):  # the first frame's header and a little payload, byte by byte
            writer.write(frames[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(frames[20:-10])
        for i in range(len(frames) - 10, len(frames)):
            writer.write(frames[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.5)
        writer.close()

    server = await asyncio.start_server(dribble, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        pipe = await open_pipe(f"http://127.0.0.1:{port}/pipe", {}, ssl_context=None)
        data, texts, ends = await _rest(pipe)
    finally:
        server.close()
    assert data == b"x" * 70_000 and texts == ["notice"]
    assert ends[0] == (WSMsgType.CLOSE, 1000, "")


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (server_frame(0x2, b"abc", mask=True), "masked frame"),
        (server_frame(0x3, b"abc"), "unknown opcode 3"),
        (server_frame(0x0, b"abc"), "continued a message it had not begun"),
        (server_frame(0x9, b"p", fin=False), "fragmented or long control frame"),
        (server_frame(0x1, b"\xff\xfe"), "not UTF-8"),
        (bytes([0xC2, 3]) + b"abc", "reserved bits"),
        (server_frame(0x1, b"a", fin=False) + server_frame(0x2, b"b"), "began a message inside another"),
    ],
)
async def test_a_peer_breaking_the_protocol_ends_the_pipe_with_why(frame: bytes, why: str) -> None:
    async with raw_peer(frame, keep_open=1) as (url, _received):
        pipe = await open_pipe(url, {}, ssl_context=None)
        _data, _texts, ends = await _rest(pipe)
    assert ends == [(WSMsgType.CLOSED, None, None)]
    assert isinstance(pipe.exception(), PipeFailed) and why in str(pipe.exception())
    assert pipe.close_code == WSCloseCode.PROTOCOL_ERROR


async def test_a_text_message_over_the_limit_ends_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_pipe, "_MAX_TEXT", 1000)
    async with raw_peer(server_frame(0x1, b"a" * 1001), keep_open=1) as (url, _received):
        pipe = await open_pipe(url, {}, ssl_context=None)
        await _rest(pipe)
    assert "over 1 MiB" in str(pipe.exception())


async def test_a_connection_that_breaks_says_so() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"before")
        assert request.transport is not None
        request.transport.abort()  # no close frame
        return ws

    async with aiohttp_peer(handler) as url:
        pipe = await open_pipe(url, {}, ssl_context=None)
        data, _texts, ends = await _rest(pipe)
    assert data == b"before" and ends == [(WSMsgType.CLOSED, None, None)]
    assert pipe.close_code == WSCloseCode.ABNORMAL_CLOSURE and pipe.exception() is not None
    with pytest.raises(ConnectionError):
        await pipe.send_bytes(b"after")


async def test_the_agent_s_refusal_comes_with_its_status_and_detail() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=409, headers={"Domus-Problem": "domain%20d1%20is%20shut%20off"})

    async with aiohttp_peer(handler) as url:
        with pytest.raises(PipeRefused) as refused:
            await open_pipe(url, {}, ssl_context=None)
    assert (refused.value.status, refused.value.detail) == (409, "domain d1 is shut off")


async def test_an_answer_that_is_not_a_websocket_one_is_refused() -> None:
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\n"
    )
    async with raw_peer(b"", answer=answer, keep_open=1) as (url, _received):
        with pytest.raises(PipeFailed, match="not a WebSocket one"):
            await open_pipe(url, {}, ssl_context=None)


async def test_pings_are_answered_so_the_agent_keeps_the_console_open() -> None:
    """The agent pings every 30 s and drops a console that does not answer (here: 0.2 s)."""
    closed: list[object] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=0.2)
        await ws.prepare(request)
        async for _msg in ws:
            pass
        closed.append(ws.close_code)
        return ws

    async with aiohttp_peer(handler) as url:
        pipe = await open_pipe(url, {}, ssl_context=None)
        await asyncio.sleep(1.5)
        assert not pipe.closed and closed == []
        await pipe.close()
        await asyncio.sleep(0.2)
    assert closed == [WSCloseCode.OK]


async def test_a_quiet_agent_is_pinged_and_one_that_does_not_answer_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(console_pipe, "_SILENCE_S", 0.2)

    async def quiet(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()  # sends nothing, pings nobody; answers pings (autoping)
        await ws.prepare(request)
        async for _msg in ws:
            pass
        return ws

    async with aiohttp_peer(quiet) as url:
        pipe = await open_pipe(url, {}, ssl_context=None)
        await asyncio.sleep(1.5)
        assert not pipe.closed
        await pipe.close()
    async with raw_peer(b"", keep_open=3) as (url, received):  # answers nothing
        pipe = await open_pipe(url, {}, ssl_context=None)
        started = asyncio.get_running_loop().time()
        await _rest(pipe)
        assert asyncio.get_running_loop().time() - started >= 0.4
    assert "answered nothing for" in str(pipe.exception())
    assert client_payloads(bytes(received)) == [(0x9, b"domus")]


async def test_a_console_that_does_not_read_stops_reading_the_socket() -> None:
    """Flow control: the agent's output waits in the kernel (and the agent), not in the
    console's memory, while the browser side is slow; nothing is lost."""
    total = 24 * 1024 * 1024

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        chunk = bytes(range(256)) * 1024
        for _ in range(total // len(chunk)):
            await ws.send_bytes(chunk)
        await ws.close()
        return ws

    async with aiohttp_peer(handler) as url:
        pipe = await open_pipe(url, {}, ssl_context=None)
        await asyncio.sleep(1.0)  # the agent writes as fast as it can; nobody reads
        assert pipe._queued <= console_pipe._PAUSE_ABOVE + console_pipe._READ_SIZE
        data, _texts, ends = await _rest(pipe)
    assert len(data) == total and data[:512] == bytes(range(256)) * 2
    assert ends[0][:2] == (WSMsgType.CLOSE, 1000)


@pytest.fixture(scope="module")
def tls_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    base: Path = tmp_path_factory.mktemp("tls-agent")
    (base / "pool").mkdir()
    agent = launch_agent(uri="test:///default", pool_dir=base / "pool", log_path=base / "agent.log", tls=True)
    yield agent
    stop_agent(agent)


async def test_over_tls_the_pinned_certificate_is_checked_before_anything_is_sent(
    tls_agent: RunningAgent,
) -> None:
    unknown = uuid.uuid4()
    # The right pin: the request reaches the agent, which answers that there is no such domain.
    async with AgentClient(tls_agent.url, tls_agent.secret, fingerprint=tls_agent.fingerprint) as client:
        with pytest.raises(AgentNotFound):
            async with client.open_console(unknown, kind="serial"):
                pass
    await asyncio.sleep(0.2)
    assert f"/v1/domains/{unknown}/console/serial" in tls_agent.log()
    # Another pin: refused after the TLS handshake, before the request.
    other = uuid.uuid4()
    async with AgentClient(tls_agent.url, tls_agent.secret, fingerprint="ab" * 32) as client:
        with pytest.raises(AgentIdentityChanged, match="different TLS certificate"):
            async with client.open_console(other, kind="serial"):
                pass
    await asyncio.sleep(0.2)
    assert str(other) not in tls_agent.log()
    # No pin and no CA that signed it: the usual verification refuses it.
    async with AgentClient(tls_agent.url, tls_agent.secret) as client:
        with pytest.raises(AgentUnreachable, match=r"is unreachable: .*CERTIFICATE_VERIFY_FAILED"):
            async with client.open_console(other, kind="serial"):
                pass


def test_pinned_console_sockets_share_one_tls_context_without_a_ca_bundle() -> None:
    # Trust comes from the pin: a context that loaded the system's CA bundle, made per socket,
    # cost each open console about 900 KiB in the console process (bench/console_bench.py
    # --agent-tls). Still TLS 1.2 at least.
    context = _unverified_tls()
    assert context is _unverified_tls()
    assert context.cert_store_stats()["x509_ca"] == 0
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_console_bytes_over_tls_under_uvloop(tmp_path: Path) -> None:
    """The console process runs uvloop (uvicorn picks it), whose TLS transport feeds the pipe's
    buffer itself: a real TLS peer streams several MiB, a notice and a close through it."""
    import uvloop

    from agent.identity import AgentIdentity

    cert = AgentIdentity(tmp_path).ensure_certificate(names=["127.0.0.1"])
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert.cert_path, cert.key_path)
    stream = bytes(range(256)) * 256 * 48  # 3 MiB, in 64 KiB frames

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        typed = await ws.receive_bytes()
        for at in range(0, len(stream), 65536):
            await ws.send_bytes(stream[at : at + 65536])
        await ws.send_str(f"typed {typed.decode()}")
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"domain stopped")
        return ws

    async def main() -> tuple[bytes, list[str], list[tuple[Any, Any, Any]]]:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        app = web.Application()
        app.router.add_get("/v1/domains/{uuid}/console/{kind}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=served)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with (
                AgentClient(f"https://127.0.0.1:{port}", "s3cret", fingerprint=cert.fingerprint) as client,
                client.open_console(uuid.uuid4(), kind="serial") as pipe,
            ):
                await pipe.send_bytes(b"ls\r")
                return await _rest(pipe)
        finally:
            await runner.cleanup()

    data, texts, ends = uvloop.run(main())
    assert data == stream and texts == ["typed ls\r"]
    assert ends[0] == (WSMsgType.CLOSE, 1001, "domain stopped")
