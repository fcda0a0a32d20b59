"""The graphical console's pipe on the agent (agent/rfb.py, agent/vnc.py): RFB framing, the two
handshakes, and the agent's route with a fake VNC server in place of the domain's."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import libvirt
import pytest
from aiohttp.test_utils import TestServer

from agent.client import AgentClient, AgentConflict
from agent.errors import Conflict
from agent.events import EventHub
from agent.identity import AgentIdentity, ConsoleKeys
from agent.rfb import CLIPBOARD_MAX, ClientMessages, RfbError, server_handshake
from agent.runtime import AgentRuntime
from agent.server import make_app
from agent.vnc import open_graphics_socket
from agent.websockets import VNC_OPENER
from tests.agent.fake_vnc import (
    FakeVncServer,
    VncOverWebSocket,
    cut_text,
    key_event,
    pointer_event,
    update_request,
)

SECRET = "console-secret-0123456789abcdef0"
DOMAIN = uuid.UUID("0e7a3c52-6b0f-4a5e-9d7c-1f2e3d4c5b6a")


# -- RFB framing ------------------------------------------------------------------------------
def test_client_messages_are_cut_whole_whatever_the_chunks() -> None:
    stream = (
        update_request() + key_event(0x61) + pointer_event(3, 4, 1) + cut_text(b"hello") + key_event(0x62)
    )
    for size in (1, 3, 7, len(stream)):
        messages = ClientMessages()
        out = []
        for i in range(0, len(stream), size):
            out += list(messages.feed(stream[i : i + size]))
        assert [kind for kind, _ in out] == [3, 4, 5, 6, 4]
        assert b"".join(m for _, m in out) == stream


def test_set_encodings_loses_what_the_agent_cannot_frame() -> None:
    encodings = [7, -316, 0, -259, -258]  # tight, extended mouse buttons, raw, QEMU audio, QEMU keys
    message = struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings)
    ((kind, rewritten),) = list(ClientMessages().feed(message))
    assert kind == 2 and rewritten == struct.pack(">BxH3i", 2, 3, 7, 0, -258)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x07" + b"\x00" * 10, "unsupported VNC client message type 7"),
        (b"\xff\x01\x00\x00", "unsupported QEMU client message 1"),
        (struct.pack(">BxxxI", 6, CLIPBOARD_MAX + 1), "clipboard text"),
    ],
)
def test_what_cannot_be_framed_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(RfbError, match=why):
        list(ClientMessages().feed(data))


async def test_a_server_asking_for_a_password_is_refused_with_why() -> None:
    replies = [b"RFB 003.008\n", b"\x01", b"\x02"]  # one security type: VNC authentication

    async def read(n: int) -> bytes:
        data = replies.pop(0)
        assert len(data) == n
        return data

    async def write(_data: bytes) -> None:
        pass

    with pytest.raises(RfbError, match="asks for a password"):
        await server_handshake(read, write)


# -- the agent's route ------------------------------------------------------------------------
class FakeDomains:
    local_files = False  # no serial consoles to record

    def __init__(self) -> None:
        self.state_of = "running"

    async def state(self, domain_uuid: uuid.UUID) -> tuple[Any, str]:
        return object(), self.state_of


class FakeRuntime:
    def __init__(self, keys: ConsoleKeys) -> None:
        self.keys = keys
        self.domains = FakeDomains()
        self.identity = None
        self.hub = EventHub()


@dataclass
class Agent:
    url: str
    vnc: FakeVncServer
    domains: FakeDomains

    def client(self) -> AgentClient:
        return AgentClient(self.url, SECRET)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    """An agent app whose domains' VNC servers are one fake server."""
    identity = AgentIdentity(str(tmp_path / "state"))
    runtime = FakeRuntime(ConsoleKeys(identity, SECRET))
    vnc = FakeVncServer()
    port = await vnc.start()

    def opener(_runtime: Any, _dom: Any) -> Any:
        async def open_socket() -> socket.socket:  # in a thread, as libvirt's opener runs
            return await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port))

        return open_socket

    app = make_app(cast(AgentRuntime, runtime))
    app[VNC_OPENER] = opener
    server = TestServer(app)
    await server.start_server()
    try:
        yield Agent(str(server.make_url("")).rstrip("/"), vnc, runtime.domains)
    finally:
        await server.close()
        await vnc.close()


async def _received(vnc: FakeVncServer, count: int) -> list[bytes]:
    async with asyncio.timeout(10):
        while len(vnc.received) < count:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # and nothing more
    return vnc.received


async def test_a_viewer_sees_the_display_and_types_into_it(agent: Agent) -> None:
    async with agent.client() as client, client.open_console(DOMAIN, kind="vnc", user="ana") as ws:
        viewer = VncOverWebSocket(ws)
        server_init = await viewer.handshake()
        assert server_init == agent.vnc.server_init()
        assert agent.vnc.shared_flags == [1]  # the agent asked to share the display
        await ws.send_bytes(update_request() + key_event(0x61))
        assert await viewer.read(8) == key_event(0x61)  # the fake server's echo
        assert await _received(agent.vnc, 2) == [update_request(), key_event(0x61)]
        notice = await viewer.notice()
        assert notice["viewers"] == ["ana"] and notice["controller_id"] == notice["you"]


async def test_one_client_holds_more_consoles_than_aiohttp_s_default_connection_cap(agent: Agent) -> None:
    """Consoles are not capped by a client's connection pool (aiohttp's is 100): 150 at once."""

    async def open_one(stack: contextlib.AsyncExitStack) -> None:
        ws = await stack.enter_async_context(client.open_console(DOMAIN, kind="vnc"))
        await VncOverWebSocket(ws).handshake()

    async with agent.client() as client, contextlib.AsyncExitStack() as stack:
        async with asyncio.timeout(10):  # the agent gives up on a handshake after 15 s
            await asyncio.gather(*(open_one(stack) for _ in range(150)))
        assert len(agent.vnc.shared_flags) == 150


async def test_a_watcher_gets_the_screen_but_its_input_never_reaches_the_guest(agent: Agent) -> None:
    async with (
        agent.client() as client,
        client.open_console(DOMAIN, kind="vnc", user="vic", mode="view") as ws,
    ):
        viewer = VncOverWebSocket(ws)
        await viewer.handshake()
        await ws.send_bytes(key_event(0x61) + pointer_event(1, 2, 1) + cut_text(b"secret") + update_request())
        await ws.send_str('{"type": "take-control"}')  # a watcher may not take it
        await ws.send_bytes(key_event(0x62) + update_request(incremental=True))
        assert await _received(agent.vnc, 2) == [update_request(), update_request(incremental=True)]
        assert (await viewer.notice())["controller"] is None


async def test_one_types_at_a_time_until_another_takes_control(agent: Agent) -> None:
    async with (
        agent.client() as client,
        client.open_console(DOMAIN, kind="vnc", user="ana") as first_ws,
        client.open_console(DOMAIN, kind="vnc", user="bob") as second_ws,
    ):
        first, second = VncOverWebSocket(first_ws), VncOverWebSocket(second_ws)
        await first.handshake()
        await first.notice(lambda n: n["viewers"] == ["ana"])  # ana came first: she has control
        await second.handshake()
        await second_ws.send_bytes(key_event(0x62))  # bob watches until he takes control
        await first_ws.send_bytes(key_event(0x61))
        assert await _received(agent.vnc, 1) == [key_event(0x61)]
        await second_ws.send_str('{"type": "take-control"}')
        took = await first.notice(lambda n: n["event"] == "bob took control")
        assert took["controller"] == "bob" and took["controller_id"] != took["you"]
        await first_ws.send_bytes(key_event(0x63))  # ana no longer types
        await second_ws.send_bytes(key_event(0x64))
        assert await _received(agent.vnc, 2) == [key_event(0x61), key_event(0x64)]


async def test_the_viewer_is_closed_with_why_when_the_server_goes(agent: Agent) -> None:
    async with agent.client() as client, client.open_console(DOMAIN, kind="vnc", user="ana") as ws:
        viewer = VncOverWebSocket(ws)
        await viewer.handshake()
        await agent.vnc.close()
        assert "the VNC server closed the console" in await viewer.closed()


async def test_a_viewer_sending_what_cannot_be_framed_is_closed_with_why(agent: Agent) -> None:
    async with agent.client() as client, client.open_console(DOMAIN, kind="vnc", user="ana") as ws:
        viewer = VncOverWebSocket(ws)
        await viewer.handshake()
        await ws.send_bytes(b"\x07garbage")
        assert "unsupported VNC client message type 7" in await viewer.closed()


async def test_no_graphical_console_while_the_domain_is_off(agent: Agent) -> None:
    agent.domains.state_of = "shutoff"
    async with agent.client() as client:
        with pytest.raises(AgentConflict, match="needs it running"):
            async with client.open_console(DOMAIN, kind="vnc"):
                pass


class XenLikeDomain:
    """A domain whose driver cannot hand over a graphics socket (as libxl's cannot)."""

    def __init__(self, graphics: str) -> None:
        self.xml = f"<domain><name>x</name><devices>{graphics}</devices></domain>"

    def name(self) -> str:
        return "x"

    def XMLDesc(self, _flags: int) -> str:
        return self.xml

    def openGraphicsFD(self, _idx: int, _flags: int) -> int:
        err = libvirt.libvirtError("this function is not supported by the connection driver")
        err.err = (libvirt.VIR_ERR_NO_SUPPORT, 0, "", 0, "", None, None, 0, 0)
        raise err


async def test_without_openGraphicsFD_the_agent_connects_to_the_loopback_port() -> None:
    vnc = FakeVncServer()
    port = await vnc.start()
    try:
        dom = XenLikeDomain(f'<graphics type="vnc" port="{port}" listen="0.0.0.0"/>')
        sock = await asyncio.to_thread(open_graphics_socket, cast(libvirt.virDomain, dom))
        with sock:
            assert sock.getpeername() == ("127.0.0.1", port)  # loopback, whatever it listens on
            assert (await asyncio.to_thread(sock.recv, 12)) == b"RFB 003.008\n"
    finally:
        await vnc.close()


def test_a_domain_without_vnc_has_no_graphical_console() -> None:
    dom = XenLikeDomain('<graphics type="spice" port="5900"/>')
    with pytest.raises(Conflict, match="no graphical \\(VNC\\) console"):
        open_graphics_socket(cast(libvirt.virDomain, dom))
