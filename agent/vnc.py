"""Graphical console: each viewer's own VNC connection to the domain, through the agent.

The domain's VNC server is never exposed: QEMU's listens on the host's loopback, and the agent
asks libvirt for a connected socket (virDomainOpenGraphicsFD, no port involved); where libvirt
cannot hand one over (the libxl driver), the agent connects to the loopback address or unix
socket the domain's live XML names.

Every viewer gets its own connection, asking the server to share the display (agent.rfb), so
any number can watch. Their sockets join one SharedConsole per domain: only the viewer holding
control sends input (keys, pointer, clipboard), and everyone is told who watches and who has
control, in JSON text frames beside the binary RFB ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid as uuid_mod
from collections.abc import Awaitable, Callable

import libvirt
from aiohttp import WSMsgType, web
from lxml import etree

from agent.errors import Conflict
from agent.rfb import (
    INPUT_TYPES,
    ClientMessages,
    RfbError,
    StreamReadExactly,
    client_handshake,
    server_handshake,
)
from agent.sharing import SharedConsole, SocketViewer

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024  # read from the VNC server at most this much per WebSocket frame
_HANDSHAKE_S = 15.0  # each side has this long to finish its handshake
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

GraphicsOpener = Callable[[], Awaitable[socket.socket]]


def open_graphics_socket(dom: libvirt.virDomain) -> socket.socket:
    """Blocking: a socket connected to the domain's VNC server (see the module's docstring)."""
    tree = etree.fromstring(dom.XMLDesc(0).encode())
    graphics = tree.findall("devices/graphics")
    index = next((i for i, g in enumerate(graphics) if g.get("type") == "vnc"), None)
    if index is None:
        raise Conflict(f"domain {dom.name()} has no graphical (VNC) console")
    try:
        fd = dom.openGraphicsFD(index, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
    except libvirt.libvirtError as err:
        if err.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
            raise
    else:
        return socket.socket(fileno=fd)
    vnc = graphics[index]
    if path := vnc.get("socket"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return sock
    port = int(vnc.get("port") or -1)
    if port <= 0:
        raise Conflict(f"the VNC server of domain {dom.name()} has no port yet")
    address = vnc.get("listen") or "127.0.0.1"
    if address not in _LOOPBACK:  # listening everywhere: the host's loopback reaches it too
        address = "127.0.0.1"
    return socket.create_connection((address, port), timeout=5)


class VncViewer(SocketViewer):
    """One browser's WebSocket and its own connection to the VNC server."""

    def __init__(self, ws: web.WebSocketResponse, *, name: str = "", can_interact: bool = True) -> None:
        super().__init__(ws, name=name, can_interact=can_interact)
        self._notices: set[asyncio.Task[None]] = set()
        self._inbox = bytearray()  # handshake bytes received from the browser, not yet read

    def offer(self, data: bytes | str) -> bool:
        """A presence notice for this viewer (sent as a text frame, beside the RFB stream)."""
        if isinstance(data, str) and not self.ws.closed:
            task = asyncio.ensure_future(self._notify(data))
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)
        return True

    async def _notify(self, notice: str) -> None:
        with contextlib.suppress(ConnectionError):  # it is leaving: the pipe says why
            await self.ws.send_str(notice)

    async def _read_ws(self, n: int) -> bytes:
        while len(self._inbox) < n:
            msg = await self.ws.receive()
            if msg.type == WSMsgType.BINARY:
                self._inbox += msg.data
            elif msg.type != WSMsgType.TEXT:  # a control request before the handshake: ignored
                raise RfbError("the viewer left during the handshake")
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        return data

    async def run(
        self,
        sharing: SharedConsole,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        server_init: bytes,
    ) -> str:
        """Handshake with the browser, then pipe both ways until either side ends; returns why."""

        async def send(data: bytes) -> None:
            await self.ws.send_bytes(data)

        try:
            async with asyncio.timeout(_HANDSHAKE_S):
                await client_handshake(self._read_ws, send, server_init)
        except (RfbError, TimeoutError) as err:
            return f"VNC handshake with the viewer failed: {err or 'timed out'}"
        sharing.join(self)
        try:
            return await self._pipe(sharing, reader, writer)
        finally:
            sharing.leave(self)
            for task in list(self._notices):
                task.cancel()

    async def _pipe(
        self, sharing: SharedConsole, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> str:
        to_browser = asyncio.ensure_future(self._server_to_browser(reader))
        to_server = asyncio.ensure_future(self._browser_to_server(sharing, writer))
        tasks = (to_browser, to_server)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            task = done.pop()
            if task.exception() is not None:
                return f"console lost: {task.exception()}"
            return task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _server_to_browser(self, reader: asyncio.StreamReader) -> str:
        while data := await reader.read(_CHUNK):
            await self.ws.send_bytes(data)
        return "the VNC server closed the console (domain stopped or rebooting its display)"

    async def _browser_to_server(self, sharing: SharedConsole, writer: asyncio.StreamWriter) -> str:
        messages = ClientMessages()
        pending = bytes(self._inbox)  # what came right after the handshake
        self._inbox.clear()
        while True:
            if pending:
                out = bytearray()
                try:
                    for kind, message in messages.feed(pending):
                        # Input from anyone but the viewer holding control never reaches the guest.
                        if kind not in INPUT_TYPES or sharing.may_type(self):
                            out += message
                except RfbError as err:
                    return f"viewer sent what the console cannot pass on: {err}"
                if out:
                    writer.write(out)
                    await writer.drain()
            msg = await self.ws.receive()
            if msg.type == WSMsgType.BINARY:
                pending = msg.data
            elif msg.type == WSMsgType.TEXT:
                sharing.request(self, msg.data)
                pending = b""
            else:
                return "client disconnected"


class VncConsoles:
    """The viewers of each domain's graphical console (a SharedConsole per domain)."""

    def __init__(self) -> None:
        self._shared: dict[uuid_mod.UUID, SharedConsole] = {}

    def sharing(self, domain_uuid: uuid_mod.UUID) -> SharedConsole:
        return self._shared.setdefault(domain_uuid, SharedConsole())

    def release(self, domain_uuid: uuid_mod.UUID) -> None:
        shared = self._shared.get(domain_uuid)
        if shared is not None and not shared.viewers:
            del self._shared[domain_uuid]


async def connect_server(opener: GraphicsOpener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Open the domain's VNC server and do the client handshake; returns its ServerInit."""
    sock = await opener()
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=_CHUNK)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    try:
        async with asyncio.timeout(_HANDSHAKE_S):
            server_init = await server_handshake(StreamReadExactly(reader), write)
    except BaseException:
        writer.close()
        raise
    return reader, writer, server_init
