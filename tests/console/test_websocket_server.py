"""console.websocket_server: the frame sink a real uvicorn offers each console socket, and an
agent console pipe attached to it (the bytes' path when the console is served as in
production), with a websockets client as the browser."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from aiohttp import WSCloseCode, WSMsgType, web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.console_pipe import open_pipe
from agent.identity import AgentIdentity
from console.launcher import WEB_SOCKET_ARGS
from console.websocket_server import EXTENSION, OP_BINARY, OP_TEXT, FrameSink
from tests.agent.test_console_pipe import aiohttp_peer
from tests.agent.test_direct_frames import expected, payloads

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
PROTOCOL = "console.websocket_server:ConsoleWebSocketProtocol"


@asynccontextmanager
async def served(app: App, *, ws: str = PROTOCOL, **tls: str) -> AsyncIterator[str]:
    """`app` served by uvicorn with the WebSocket protocol `ws` (over TLS with `ssl_certfile`
    and `ssl_keyfile`); yields its ws:// URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ws=ws,
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
        **tls,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/console"
    finally:
        server.should_exit = True
        await task


def sink_of(scope: dict[str, Any]) -> FrameSink:
    sink: FrameSink = scope["extensions"][EXTENSION]
    return sink


def browser(url: str, **options: Any) -> Any:
    return connect(url, max_size=None, compression=None, open_timeout=10, **options)


async def read_all(client: ClientConnection) -> tuple[list[bytes | str], int | None]:
    """What the browser receives until the console closes: messages, then the close code."""
    out: list[bytes | str] = []
    async with asyncio.timeout(20):
        try:
            while True:
                out.append(await client.recv())
        except ConnectionClosed as closed:
            return out, closed.rcvd.code if closed.rcvd else None


async def test_the_sink_writes_frames_between_the_accept_and_the_close() -> None:
    states: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        sink: FrameSink = scope["extensions"][EXTENSION]
        assert (await receive())["type"] == "websocket.connect"
        states.append(sink.open)  # no answer to the upgrade yet: no frame may go
        await send({"type": "websocket.accept"})
        states.append(sink.open)
        sink.write(OP_BINARY, b"")
        sink.write(OP_BINARY, b"x" * 100)
        await send({"type": "websocket.send", "text": "through ASGI"})  # keeps its place
        sink.write_pieces(OP_BINARY, [memoryview(b"a" * 70_000), memoryview(b"b" * 3)], 70_003)
        sink.write(OP_TEXT, "héllo".encode())
        sink.write(OP_BINARY, b"z" * 300_000)  # a 64-bit length
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})
        states.append(sink.open)

    async with served(app) as url, browser(url) as client:
        messages, code = await read_all(client)
    assert states == [False, True, False]
    assert messages == [b"", b"x" * 100, "through ASGI", b"a" * 70_000 + b"bbb", "héllo", b"z" * 300_000]
    assert code == 4000


async def test_only_the_console_s_protocol_offers_the_sink() -> None:
    seen: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(EXTENSION in scope["extensions"])
        await receive()
        await send({"type": "websocket.close"})

    async with served(app, ws="websockets-sansio") as url:
        with pytest.raises(InvalidStatus) as refused:  # closed before the accept: only the scope was wanted
            async with browser(url):
                pass
    assert refused.value.response.status_code == 403
    assert seen == [False]


async def test_a_full_browser_socket_pauses_the_sink_until_it_drains() -> None:
    drained = asyncio.Event()
    full = asyncio.Event()
    written = [0]
    chunk = b"p" * (1024 * 1024)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        sink: FrameSink = scope["extensions"][EXTENSION]
        sink.on_writable = drained.set
        await receive()
        await send({"type": "websocket.accept"})
        while written[0] < 256:  # until the socket stays full: the browser has stopped reading
            while not sink.paused and written[0] < 256:
                sink.write(OP_BINARY, chunk)
                written[0] += 1
                await asyncio.sleep(0)
            drained.clear()
            await asyncio.sleep(0.5)
            if sink.paused:
                break
        full.set()
        await drained.wait()
        await send({"type": "websocket.close", "code": 1000})

    async with served(app) as url, browser(url, max_queue=1) as client:
        async with asyncio.timeout(20):
            await full.wait()
        assert written[0] < 256  # it said the socket was full, and it stayed so
        assert not drained.is_set()
        messages, code = await read_all(client)
    assert drained.is_set() and code == 1000
    assert len(messages) == written[0] and all(m == chunk for m in messages)


def reused_buffer_app(frames: list[bytes], writes: list[int], *, sndbuf: int = 0) -> App:
    """Each of `frames` written from one buffer, as the console pipe writes (views of its read
    buffer, in two pieces), the buffer overwritten at once after each write, as the pipe's next
    read would; a text frame after each. `writes` gets 1 for each frame that went out directly.
    `sndbuf`: a small send buffer, for the kernel to take only part of the big frames."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        sink = sink_of(scope)
        if sndbuf:
            sock = sink._protocol.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        await receive()
        await send({"type": "websocket.accept"})
        buffer = bytearray(max(len(f) for f in frames))
        view = memoryview(buffer)
        for i, frame in enumerate(frames):
            buffer[: len(frame)] = frame
            cut = len(frame) // 3
            writes.append(int(sink._fd >= 0 and not sink._protocol.transport.get_write_buffer_size()))
            sink.write_pieces(OP_BINARY, [view[:cut], view[cut : len(frame)]], len(frame))
            buffer[:] = b"\xee" * len(buffer)  # the next read lands here
            sink.write(OP_TEXT, f"after {i}".encode())
            await asyncio.sleep(0)
        await send({"type": "websocket.close", "code": 1000})

    return app


async def test_a_read_of_many_small_frames_goes_out_as_one_frame() -> None:
    """A chatty serial line: thousands of the agent's frames in one read, one frame onwards."""
    pieces = [bytes([n % 256]) for n in range(3000)]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        sink = sink_of(scope)
        await receive()
        await send({"type": "websocket.accept"})
        sink.write_pieces(OP_BINARY, [memoryview(p) for p in pieces], len(pieces))
        await send({"type": "websocket.close", "code": 1000})

    async with served(app) as url, browser(url) as client:
        messages, code = await read_all(client)
    assert messages == [b"".join(pieces)] and code == 1000


async def reused_buffer_late_reader() -> tuple[list[bytes | str], int | None, list[int]]:
    frames, writes = payloads(), list[int]()
    app = reused_buffer_app(frames, writes, sndbuf=16 * 1024)
    async with served(app) as url, browser(url, max_queue=1) as client:
        await asyncio.sleep(0.3)  # not reading: the kernel takes part of the big frames
        messages, code = await read_all(client)
    assert messages == expected(frames)
    return messages, code, writes


async def test_frames_from_a_reused_buffer_arrive_as_they_were_written() -> None:
    """Straight from the pipe's buffer to the kernel, and what a full socket does not take is
    copied before the buffer is reused: a browser reading late still gets every byte."""
    _, code, writes = await reused_buffer_late_reader()
    assert code == 1000 and writes[0] == 1  # the first, at least, went out directly
    assert 0 in writes  # and some found the transport holding the rest of another


def test_frames_from_a_reused_buffer_arrive_as_they_were_written_under_uvloop() -> None:
    """The same under uvloop, the console's loop (uvicorn picks it), whose transport keeps a
    reference to what it is given where asyncio's copies it."""
    import uvloop

    _, code, writes = uvloop.run(reused_buffer_late_reader())
    assert code == 1000 and writes[0] == 1 and 0 in writes


def test_a_frame_waits_behind_what_the_transport_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the transport still holds bytes of an earlier frame, a new frame goes behind them,
    never to the socket first, even when the socket could take it. (A real socket drains
    between two loop turns too rarely to catch this reliably: a transport that says it holds
    bytes stands in.)"""

    class Holding:
        def __init__(self, sock: socket.socket) -> None:
            self.sock, self.written = sock, list[bytes]()

        def get_extra_info(self, name: str) -> object:
            return self.sock if name == "socket" else None

        def get_write_buffer_size(self) -> int:
            return 1  # the rest of an earlier frame

        def write(self, data: bytes) -> None:
            self.written.append(bytes(data))

    calls: list[int] = []

    def writev(fd: int, buffers: list[bytes | memoryview]) -> int:
        calls.append(fd)
        return sum(len(b) for b in buffers)

    monkeypatch.setattr(os, "writev", writev)
    here, there = socket.socketpair()
    with here, there:
        protocol = type("Protocol", (), {"transport": Holding(here)})()
        sink = FrameSink(protocol)
        data = bytearray(b"abcdef")
        sink.write_pieces(OP_BINARY, [memoryview(data)[:2], memoryview(data)[2:]], 6)
        data[:] = b"xxxxxx"
    assert calls == []
    assert protocol.transport.written == [b"\x82\x06abcdef"]


@pytest.mark.parametrize("taken", [0, 1, 3, 10, 11, 65000])
async def test_each_place_a_console_frame_can_be_cut(monkeypatch: pytest.MonkeyPatch, taken: int) -> None:
    # The kernel taking exactly `taken` bytes of each writev (none: EAGAIN), in the header or
    # in either piece of the payload: the rest follows through the transport, copied.
    def writev(fd: int, buffers: list[bytes | memoryview]) -> int:
        if not taken:
            raise BlockingIOError
        return os.write(fd, b"".join(buffers)[:taken])

    monkeypatch.setattr(os, "writev", writev)
    frames, writes = payloads(), list[int]()
    async with served(reused_buffer_app(frames, writes)) as url, browser(url) as client:
        messages, code = await read_all(client)
    assert messages == expected(frames)
    assert code == 1000 and writes[0] == 1


async def test_over_tls_frames_go_through_the_transport(tmp_path: Path) -> None:
    cert = AgentIdentity(tmp_path / "state").ensure_certificate(names=["127.0.0.1"])
    frames, writes = payloads(), list[int]()
    tls = {"ssl_certfile": str(cert.cert_path), "ssl_keyfile": str(cert.key_path)}
    client_tls = ssl.create_default_context()
    client_tls.check_hostname, client_tls.verify_mode = False, ssl.CERT_NONE
    async with served(reused_buffer_app(frames, writes), **tls) as url:
        async with browser(url.replace("ws://", "wss://"), ssl=client_tls) as client:
            messages, code = await read_all(client)
    assert messages == expected(frames)
    assert code == 1000 and writes == [0] * len(frames)


def console_app(received: list[object]) -> App:
    """A console in miniature: a pipe to the agent at the URL in the query string, attached
    to the browser's socket once accepted; `received` gets what the pipe's receive() gave."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        pipe = await open_pipe(scope["query_string"].decode(), {}, ssl_context=None)
        await send({"type": "websocket.accept"})
        pipe.attach(sink_of(scope))
        await pipe.send_str("go")
        async for msg in pipe:
            received.append(msg.type)  # nothing, while the sink takes the bytes
        received.append((pipe.close_code, pipe.exception()))
        await send({"type": "websocket.close", "code": 1000, "reason": "console closed by the host"})
        await pipe.close()

    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def test_an_attached_pipe_sends_the_agent_s_bytes_straight_to_the_browser_in_order() -> None:
    """What came before the attach goes first, then everything else in the order the agent sent
    it, none of it through receive(), which still reports the agent's close."""
    chunk = bytes(range(256)) * 1024

    async def agent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"early")  # before the console attached
        await ws.send_str('{"type": "presence"}')
        assert await ws.receive_str() == "go"
        for _ in range(12):
            await ws.send_bytes(chunk)
        await ws.send_str('{"type": "control"}')
        await ws.send_bytes(b"tail")
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"domain stopped")
        return ws

    received: list[object] = []
    async with aiohttp_peer(agent) as agent_url, served(console_app(received)) as url:
        async with browser(f"{url}?{agent_url}") as client:
            messages, code = await read_all(client)
    texts = [m for m in messages if isinstance(m, str)]
    stream = b"".join(m for m in messages if isinstance(m, bytes))
    assert texts == ['{"type": "presence"}', '{"type": "control"}']
    assert messages[0] == b"early" and messages[1] == '{"type": "presence"}'
    before_control = b"".join(m for m in messages[: messages.index(texts[1])] if isinstance(m, bytes))
    assert before_control == b"early" + chunk * 12
    assert stream == b"early" + chunk * 12 + b"tail" and messages[-1] == b"tail"
    assert received == [(1001, None)] and code == 1000


async def test_a_browser_that_does_not_read_stops_the_pipe_reading_the_agent() -> None:
    """Flow control through the sink: the agent's output waits in the kernel and the agent,
    not in the console; when the browser reads again, all of it arrives."""
    total = 48 * 1024 * 1024
    chunk = bytes(range(256)) * 1024
    sent = [0]

    async def agent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_str()
        while sent[0] < total:
            await ws.send_bytes(chunk)  # waits while the console does not read
            sent[0] += len(chunk)
        await ws.close()
        return ws

    received: list[object] = []
    async with aiohttp_peer(agent) as agent_url, served(console_app(received)) as url:
        async with browser(f"{url}?{agent_url}") as client:
            await asyncio.sleep(1.0)  # the agent writes as fast as it can; the browser reads nothing
            assert sent[0] < total / 2  # it was held back (kernel buffers hold a few MiB)
            messages, code = await read_all(client)
    stream = b"".join(m for m in messages if isinstance(m, bytes))
    assert len(stream) == total and stream[:512] == bytes(range(256)) * 2
    assert received == [(1000, None)] and code == 1000


async def test_once_the_browser_has_gone_the_pipe_s_bytes_go_back_to_receive() -> None:
    """A browser that leaves while the agent streams: no write after the close, no error;
    what still comes is queued for receive(), as without the sink."""
    got_after: list[int] = []
    left = asyncio.Event()

    async def agent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await left.wait()
        await ws.send_bytes(b"after")
        await ws.close()
        return ws

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        pipe = await open_pipe(scope["query_string"].decode(), {}, ssl_context=None)
        await send({"type": "websocket.accept"})
        sink = sink_of(scope)
        pipe.attach(sink)
        assert (await receive())["type"] == "websocket.disconnect"
        assert not sink.open
        left.set()
        async for msg in pipe:
            assert msg.type == WSMsgType.BINARY
            got_after.append(len(msg.data))
        await pipe.close()

    async with aiohttp_peer(agent) as agent_url, served(app) as url:
        async with browser(f"{url}?{agent_url}"):
            pass  # opens, then leaves at once
        async with asyncio.timeout(10):
            await left.wait()
            while not got_after:
                await asyncio.sleep(0.01)
    assert got_after == [5]


def test_production_serves_consoles_as_make_run_does() -> None:
    """Production's web role (README and docker/compose.yaml: `python -m console.roles web`)
    passes the launcher's WebSocket options: without this protocol, consoles still work, at ~20%
    more CPU per byte."""
    from console.roles import command

    root = Path(__file__).resolve().parents[2]
    assert "python -m console.roles web" in (root / "README.md").read_text()
    assert '"python", "-m", "console.roles"' in (root / "docker" / "console" / "Dockerfile").read_text()
    assert " ".join(WEB_SOCKET_ARGS) in " ".join(command("web", [], {}))
