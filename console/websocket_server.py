"""uvicorn's sans-I/O WebSocket protocol, with a way out for console bytes.

A console passes bytes from the agent to the browser, hundreds of megabytes a second for a
busy graphical one. Through ASGI each read from the agent would become a `websocket.send`
event, go through Channels' consumer and uvicorn's `send`, be built into a frame by websockets
(the payload copied once more on the way) and only then reach the socket. This protocol offers
an open console the shortcut: `scope["extensions"]["domus.frames"]` is a FrameSink that writes
whole server frames (unmasked, RFC 6455 5.1) straight to the browser's socket, and says when
that socket's buffer is full so the console can stop reading from the agent. Everything else
(the upgrade, what the browser sends, pings, the closing handshake) stays uvicorn's.

`console.launcher.WEB_SOCKET_ARGS` selects it (`--ws console.websocket_server:...`), for make
run, the benchmarks and production alike. Where the extension is missing (Channels' test
communicator, another server), consumers send through ASGI as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from agent.direct_frames import OP_BINARY, OP_TEXT, frame_header, plain_socket_fd, write_now

__all__ = ["EXTENSION", "OP_BINARY", "OP_TEXT", "ConsoleWebSocketProtocol", "FrameSink"]

EXTENSION = "domus.frames"
# A read from the agent with more frames than this (a chatty serial line) is joined, copied
# once, rather than written as that many pieces (writev(2) takes at most IOV_MAX, 1024).
_DIRECT_PIECES = 64


class FrameSink:
    """Whole frames to one browser's socket, once its upgrade has been answered.

    `open` says whether a frame may be written now: the console accepted the socket and has
    not begun to close it, and the browser is still there. `paused` says the socket's buffer
    is over its high-water mark; `on_writable` (set by the one user of the sink) hears when
    it drains again, and when the connection is lost.
    """

    __slots__ = ("_fd", "_protocol", "on_writable", "paused")

    def __init__(self, protocol: ConsoleWebSocketProtocol) -> None:
        self._protocol = protocol
        self._fd = plain_socket_fd(protocol.transport)  # -1: TLS, frames go through the transport
        self.paused = False
        self.on_writable: Callable[[], None] | None = None

    @property
    def open(self) -> bool:
        p = self._protocol
        return (
            p.handshake_complete
            and p.initial_response is None
            and not p.close_sent
            and not p.disconnected
            and not p.transport.is_closing()
        )

    def write(self, opcode: int, payload: bytes) -> None:
        """One frame: `payload` whole (the caller checked `open`)."""
        self._protocol.transport.write(frame_header(opcode, len(payload)) + payload)

    def write_pieces(self, opcode: int, pieces: list[memoryview], length: int) -> None:
        """One frame of the pieces' bytes. The pieces are views of a buffer that is about to
        be reused: on a plain socket with nothing waiting they go to the kernel straight from
        it (one writev, no copy), and only what the kernel does not take is copied for the
        transport to send later; otherwise they are copied once, for the transport."""
        transport = self._protocol.transport
        header = frame_header(opcode, length)
        if self._fd >= 0 and len(pieces) < _DIRECT_PIECES and not transport.get_write_buffer_size():
            try:
                write_now(self._fd, transport, [header, *pieces], owned=False)
                return
            except OSError:
                pass  # broken: the transport's own write meets the error and closes as usual
        transport.write(b"".join([header, *pieces]))

    def _changed(self, paused: bool) -> None:
        self.paused = paused
        if not paused and self.on_writable is not None:
            self.on_writable()


class ConsoleWebSocketProtocol(WebSocketsSansIOProtocol):
    """WebSocketsSansIOProtocol, plus the FrameSink in each accepted-to-be socket's scope."""

    _sink: FrameSink | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: dict[str, Any] | None = getattr(self, "scope", None)  # only for a 101 to come
        if scope is not None:
            self._sink = FrameSink(self)
            scope["extensions"][EXTENSION] = self._sink

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._sink is not None:
            self._sink._changed(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._sink is not None:
            self._sink._changed(False)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._sink is not None:
            self._sink._changed(False)  # nothing will drain now: whoever waits, stop
