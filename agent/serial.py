"""Serial console byte pipe: a libvirt console stream <-> a WebSocket (binary frames).

The stream is non-blocking and driven by libvirtaio: its readable callback runs on the event
loop and drains `recv()` until it would block (-2). Output is queued (bounded); when the queue
is full, reading pauses until the WebSocket side catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuid_mod

import libvirt
from aiohttp import WSCloseCode, WSMsgType, web

from agent.protocol import DomainEvent

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 256
_WATCH = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
_EOF = b""


def open_console_stream(conn: libvirt.virConnect, dom: libvirt.virDomain) -> libvirt.virStream:
    """Blocking: a non-blocking stream attached to the domain's first serial console."""
    stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    try:
        dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    except libvirt.libvirtError:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    return stream


class SerialPipe:
    def __init__(
        self, stream: libvirt.virStream, ws: web.WebSocketResponse, domain_uuid: uuid_mod.UUID
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._uuid = domain_uuid
        self._out: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        self._paused = False
        self._close_reason = "console stream ended"
        self._stopped = asyncio.Event()

    # -- libvirt -> queue (event loop callbacks) ---------------------------------------------
    def _on_stream(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._finish("console stream closed by the host")
            return
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            self._drain(stream)

    def _drain(self, stream: libvirt.virStream) -> None:
        while not self._out.full():
            try:
                data = stream.recv(_CHUNK)
            except libvirt.libvirtError as err:
                self._finish(f"console stream error: {err.get_error_message()}")
                return
            if data == -2:  # would block: wait for the next readable event
                return
            if not isinstance(data, bytes) or not data:
                self._finish("console stream ended")
                return
            self._out.put_nowait(data)
        self._pause()

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.eventUpdateCallback(
                    libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
                )

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.eventUpdateCallback(_WATCH)
            self._drain(self._stream)

    def _finish(self, reason: str) -> None:
        if not self._stopped.is_set():
            self._close_reason = reason
            self._stopped.set()
            with contextlib.suppress(asyncio.QueueFull):
                self._out.put_nowait(_EOF)

    def on_domain_event(self, event: DomainEvent) -> None:
        if event.uuid == self._uuid and event.event in ("stopped", "crashed", "undefined"):
            self._finish(f"domain {event.event}")

    # -- the two directions ------------------------------------------------------------------
    async def _guest_to_ws(self) -> None:
        while True:
            if self._out.empty() and self._stopped.is_set():
                return
            data = await self._out.get()
            if data == _EOF:
                return
            await self._ws.send_bytes(data)
            if self._paused and self._out.qsize() < _QUEUE_CHUNKS // 2:
                self._resume()

    async def _ws_to_guest(self) -> None:
        async for msg in self._ws:
            if msg.type == WSMsgType.BINARY:
                await self._send(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await self._send(msg.data.encode())
            elif msg.type == WSMsgType.ERROR:
                break
        self._finish("client disconnected")

    async def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._stream.send(bytes(view))
            except libvirt.libvirtError as err:
                self._finish(f"console stream error: {err.get_error_message()}")
                return
            if sent == -2:  # would block: the console is not taking input yet
                await asyncio.sleep(0.01)
                continue
            view = view[sent:]

    async def run(self) -> str:
        """Pipe bytes until either side ends; returns the close reason."""
        self._stream.eventAddCallback(_WATCH, self._on_stream, None)
        tasks = [
            asyncio.ensure_future(self._guest_to_ws()),
            asyncio.ensure_future(self._ws_to_guest()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._cleanup()
        if not self._ws.closed:
            await self._ws.close(code=WSCloseCode.GOING_AWAY, message=self._close_reason.encode()[:120])
        return self._close_reason

    def _cleanup(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.abort()
