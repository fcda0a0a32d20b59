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

from agent.direct_frames import DirectFrames
from agent.errors import Conflict
from agent.rfb import INPUT_TYPES, ClientMessages, RfbError, client_handshake, server_handshake
from agent.sharing import SharedConsole, SocketViewer, cancel_all

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


class ServerSocket:
    """The connection to the domain's VNC server, read and written with the event loop's socket
    calls: each chunk the kernel hands over goes to the viewer's WebSocket as it is. (An asyncio
    StreamReader would copy every byte twice more on its way, which was a third of the agent's
    CPU on a full-speed screen.)"""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()

    async def recv(self) -> bytes:
        """What the server sent since the last call (at most _CHUNK); b"" once it has closed."""
        return await self._loop.sock_recv(self.sock, _CHUNK)

    async def read_exactly(self, n: int) -> bytes:
        """n bytes of the handshake (nothing past them is read, so nothing is left buffered)."""
        data = b""
        while len(data) < n:
            chunk = await self._loop.sock_recv(self.sock, n - len(data))
            if not chunk:
                raise RfbError("the VNC server closed the connection during the handshake")
            data += chunk
        return data

    async def send(self, data: bytes | bytearray) -> None:
        await self._loop.sock_sendall(self.sock, data)

    def close(self) -> None:
        self.sock.close()


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
        server: ServerSocket,
        server_init: bytes,
        frames: DirectFrames | None = None,
    ) -> str:
        """Handshake with the browser, then pipe both ways until either side ends; returns why.
        The screen goes out through `frames` when given (agent.direct_frames)."""

        async def send(data: bytes) -> None:
            await self.ws.send_bytes(data)

        try:
            async with asyncio.timeout(_HANDSHAKE_S):
                await client_handshake(self._read_ws, send, server_init)
        except (RfbError, TimeoutError) as err:
            return f"VNC handshake with the viewer failed: {err or 'timed out'}"
        sharing.join(self)
        try:
            return await self._pipe(sharing, server, frames)
        finally:
            sharing.leave(self)
            for task in list(self._notices):
                task.cancel()

    async def _pipe(self, sharing: SharedConsole, server: ServerSocket, frames: DirectFrames | None) -> str:
        send = frames.send if frames is not None else self.ws.send_bytes
        to_browser = asyncio.ensure_future(self._server_to_browser(server, send))
        to_server = asyncio.ensure_future(self._browser_to_server(sharing, server))
        tasks = (to_browser, to_server)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            task = done.pop()
            if task.exception() is not None:
                return f"console lost: {task.exception()}"
            return task.result()
        finally:
            await cancel_all(tasks)

    async def _server_to_browser(self, server: ServerSocket, send: Callable[[bytes], Awaitable[None]]) -> str:
        while data := await server.recv():
            await send(data)  # waits only while the console's socket is full
            # Neither call waits while the server has more to send and the console takes it:
            # give the loop a turn, so one busy screen does not hold up the other consoles.
            await asyncio.sleep(0)
        return "the VNC server closed the console (domain stopped or rebooting its display)"

    async def _browser_to_server(self, sharing: SharedConsole, server: ServerSocket) -> str:
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
                    await server.send(out)
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


async def connect_server(opener: GraphicsOpener) -> tuple[ServerSocket, bytes]:
    """Open the domain's VNC server and do the client handshake; returns its ServerInit."""
    server = ServerSocket(await opener())
    try:
        async with asyncio.timeout(_HANDSHAKE_S):
            server_init = await server_handshake(server.read_exactly, server.send)
    except BaseException:
        server.close()
        raise
    return server, server_init
