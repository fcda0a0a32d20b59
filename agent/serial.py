"""Serial console: one libvirt console stream per domain, fanned out to any number of WebSockets.

The agent records every running domain's console: a session is opened when a domain starts (and,
at start-up, for those already running), with VIR_DOMAIN_CONSOLE_FORCE, and keeps the last
HISTORY_BYTES of output. A viewer joining sees that history first (boot messages printed before
anyone connected), then everything the guest prints. Input from any viewer goes to the stream in
arrival order. When the stream ends (domain stopped, EOF, error) every viewer is closed with the
reason and the session is forgotten, its history kept for a log download until the domain starts
again; the next viewer opens a fresh stream. Without recording (the test driver has no consoles),
the first viewer opens the stream and the last one leaving releases it.

The stream is non-blocking and driven by libvirtaio: its readable callback runs on the event
loop and drains `recv()` until it would block (-2). Each viewer has a bounded output queue; a
viewer that cannot keep up (queue full) is dropped with a reason rather than slowing the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid as uuid_mod
from collections.abc import Awaitable, Callable

import libvirt
import libvirt_qemu
from aiohttp import WSMsgType, web

from agent.errors import AgentProblem, Conflict
from agent.events import EventHub
from agent.protocol import DomainEvent
from agent.sharing import SEND_BREAK, SharedConsole, SocketViewer, cancel_all, request_type

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 256  # per viewer, output chunks not yet sent
_INPUT_CHUNKS = 256  # per session, input chunks not yet written to the stream
_FLUSH_GRACE_S = 5.0  # after the stream ended, how long a viewer may take to send what it has
HISTORY_BYTES = 256 * 1024  # per domain: what a viewer who joins late sees first
_WATCH = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
_EOF = b""

StreamOpener = Callable[[], Awaitable[libvirt.virStream]]
Breaker = Callable[[], Awaitable[None]]  # sends a break on a domain's serial line


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


def send_break(dom: libvirt.virDomain) -> None:
    """Blocking: a break on the domain's first serial port, as a real line would send it.

    libvirt's console stream carries bytes only, so this asks QEMU itself (chardev-send-break
    on the chardev libvirt names `charserial0`); the guest's UART sees a break condition, which
    Linux reads, followed by a key within 5 s, as Magic SysRq. libvirt marks the domain
    "tainted: custom-monitor" in its log the first time. Xen has no such command."""
    command = {"execute": "chardev-send-break", "arguments": {"id": "charserial0"}}
    libvirt_qemu.qemuMonitorCommand(dom, json.dumps(command), 0)


def _abort_stream(stream: libvirt.virStream) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        stream.abort()


class SerialViewer(SocketViewer):
    """One WebSocket attached to a session: a bounded output queue and an input reader.

    `name` is who watches (as the console says); only a viewer that `can_interact` may hold
    control, and only the one holding it types into the guest (see agent.sharing)."""

    def __init__(self, ws: web.WebSocketResponse, *, name: str = "", can_interact: bool = True) -> None:
        super().__init__(ws, name=name, can_interact=can_interact)
        # Output bytes (binary frames) and presence notices (JSON text frames), in order.
        self._out: asyncio.Queue[bytes | str] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        self._ended = asyncio.Event()
        self._finishing = False
        self._grace: asyncio.TimerHandle | None = None

    def offer(self, data: bytes | str) -> bool:
        """Queue output for this viewer; False when its queue is full (the viewer is too slow)."""
        if self._finishing:
            return True
        try:
            self._out.put_nowait(data)
        except asyncio.QueueFull:
            return False
        return True

    def end(self, reason: str, *, flush: bool) -> None:
        """Stop this viewer: after sending what is queued (flush), or right away."""
        if self._finishing:
            if not flush:
                self._ended.set()
            return
        self._finishing = True
        self.reason = reason
        if flush:
            try:
                self._out.put_nowait(_EOF)
            except asyncio.QueueFull:
                self._ended.set()
            else:
                self._grace = asyncio.get_running_loop().call_later(_FLUSH_GRACE_S, self._ended.set)
        else:
            self._ended.set()

    async def _send_output(self) -> None:
        while True:
            data = await self._out.get()
            if data == _EOF:
                return
            if isinstance(data, str):
                await self.ws.send_str(data)
            else:
                await self.ws.send_bytes(data)

    async def _read_input(self, session: SerialSession) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                await session.write(msg.data, self)
            elif msg.type == WSMsgType.TEXT:  # a request, never keystrokes
                if request_type(msg.data) == SEND_BREAK:
                    await session.send_break(self)
                else:
                    session.sharing.request(self, msg.data)
            elif msg.type == WSMsgType.ERROR:
                break

    async def run(self, session: SerialSession) -> str:
        """Pipe bytes until the viewer leaves, is dropped or the session ends; returns why."""
        sender = asyncio.ensure_future(self._send_output())
        reader = asyncio.ensure_future(self._read_input(session))
        ended = asyncio.ensure_future(self._ended.wait())
        tasks = (sender, reader, ended)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if not self._finishing:
                if reader.done():
                    self.reason = "client disconnected"
                elif sender.done() and sender.exception() is not None:
                    self.reason = f"sending to the client failed: {sender.exception()!r}"
                self._finishing = True
        finally:
            await cancel_all(tasks)
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
        return self.reason


class SerialSession:
    """The one console stream of a domain and the viewers sharing it."""

    def __init__(
        self,
        stream: libvirt.virStream,
        domain_uuid: uuid_mod.UUID,
        *,
        hub: EventHub,
        on_closed: Callable[[SerialSession], None],
        breaker: Breaker | None = None,
    ) -> None:
        self.uuid = domain_uuid
        self._breaker = breaker
        self.viewers: set[SerialViewer] = set()
        self.sharing = SharedConsole()  # who watches, and the one who types
        self.closed = False
        self.reason = ""
        self._stream = stream
        self._hub = hub
        self._on_closed = on_closed
        self._input: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_INPUT_CHUNKS)
        self._writer: asyncio.Task[None] | None = None
        self._callback_added = False
        self.history = bytearray()  # the last HISTORY_BYTES the guest printed
        self.recording = False  # kept open without viewers (the agent records this console)

    def start(self) -> None:
        self._hub.add_listener(self.on_domain_event)
        try:
            self._stream.eventAddCallback(_WATCH, self._on_stream, None)
            self._callback_added = True
        except BaseException:
            self.close("could not watch the console stream")
            raise
        self._writer = asyncio.ensure_future(self._write_input())

    # -- membership ----------------------------------------------------------------------------
    def add(self, viewer: SerialViewer) -> None:
        assert not self.closed
        if self.history:  # what was printed before this viewer came (its queue is empty)
            viewer.offer(bytes(self.history))
        self.viewers.add(viewer)
        self.sharing.join(viewer)

    def leave(self, viewer: SerialViewer) -> None:
        if viewer not in self.viewers:
            return
        self.viewers.discard(viewer)
        last = not self.viewers and not self.recording
        self.sharing.leave(viewer, announce=not self.closed and not last)
        if last and not self.closed:
            self.close("last viewer left", flush=False)

    # -- libvirt -> viewers (event loop callbacks) ------------------------------------------------
    def _on_stream(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        if self.closed:
            return
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            self._drain(stream)
        if not self.closed and events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self.close("console stream closed by the host")

    def _drain(self, stream: libvirt.virStream) -> None:
        while not self.closed:
            try:
                data = stream.recv(_CHUNK)
            except libvirt.libvirtError as err:
                self.close(f"console stream error: {err.get_error_message()}")
                return
            if data == -2:  # would block: wait for the next readable event
                return
            if not isinstance(data, bytes) or not data:
                self.close("console stream ended", eof=True)
                return
            self.history += data
            if len(self.history) > HISTORY_BYTES:
                del self.history[: len(self.history) - HISTORY_BYTES]
            for viewer in list(self.viewers):
                if not viewer.offer(data):
                    log.warning("serial console of %s: dropping a viewer that cannot keep up", self.uuid)
                    viewer.end("viewer too slow: console output queue overflowed", flush=False)
                    self.leave(viewer)

    def on_domain_event(self, event: DomainEvent) -> None:
        if event.uuid == self.uuid and event.event in ("stopped", "crashed", "undefined"):
            self.close(f"domain {event.event}")

    # -- viewers -> libvirt ----------------------------------------------------------------------
    async def write(self, data: bytes, viewer: SerialViewer) -> None:
        """Keystrokes from `viewer`: they reach the guest only while it holds control."""
        if not self.closed and data and self.sharing.may_type(viewer):
            await self._input.put(data)

    async def send_break(self, viewer: SerialViewer) -> None:
        """A break on the line, asked by `viewer`: only while it holds control. A failure is
        told to that viewer alone, as a JSON text frame {"type": "error", "detail": ...}."""
        if self.closed or not self.sharing.may_type(viewer):
            return
        try:
            if self._breaker is None:
                raise Conflict("this console cannot send a break")
            await self._breaker()
        except AgentProblem as err:
            viewer.offer(json.dumps({"type": "error", "detail": f"break not sent: {err.detail}"}))
        else:
            log.info("serial console of %s: %s sent a break", self.uuid, viewer.name)

    async def _write_input(self) -> None:
        while True:
            view = memoryview(await self._input.get())
            while view:
                try:
                    sent = self._stream.send(bytes(view))
                except libvirt.libvirtError as err:
                    self.close(f"console stream error: {err.get_error_message()}")
                    return
                if sent == -2:  # would block: the console is not taking input yet
                    await asyncio.sleep(0.01)
                    continue
                view = view[sent:]

    # -- the end ---------------------------------------------------------------------------------
    def close(self, reason: str, *, flush: bool = True, eof: bool = False) -> None:
        """End the session: release the stream and close every viewer with `reason`."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        log.info("serial console session of %s closed: %s", self.uuid, reason)
        self._hub.remove_listener(self.on_domain_event)
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if self._callback_added:
            self._callback_added = False
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.eventRemoveCallback()
        if eof:
            try:
                self._stream.finish()
            except libvirt.libvirtError:
                _abort_stream(self._stream)
        else:
            _abort_stream(self._stream)
        viewers, self.viewers = self.viewers, set()
        self.sharing = SharedConsole()
        for viewer in viewers:
            viewer.end(reason, flush=flush)
        self._on_closed(self)


class SerialConsoles:
    """The agent's serial console sessions, at most one per domain.

    With `opener_for` (a stream opener per domain), every running domain's console is recorded:
    opened when the domain starts and kept open without viewers."""

    def __init__(
        self,
        hub: EventHub,
        opener_for: Callable[[uuid_mod.UUID], StreamOpener] | None = None,
        breaker_for: Callable[[uuid_mod.UUID], Breaker] | None = None,
    ) -> None:
        self._hub = hub
        self._opener_for = opener_for
        self._breaker_for = breaker_for
        self._sessions: dict[uuid_mod.UUID, SerialSession] = {}
        # Per-domain opening locks, with the number of joiners using each (to drop it after).
        self._locks: dict[uuid_mod.UUID, tuple[asyncio.Lock, int]] = {}
        self._last: dict[uuid_mod.UUID, bytes] = {}  # history of a domain whose console ended
        self._tasks: set[asyncio.Task[None]] = set()
        if opener_for is not None:
            hub.add_listener(self._on_domain_event)

    def session(self, domain_uuid: uuid_mod.UUID) -> SerialSession | None:
        return self._sessions.get(domain_uuid)

    def history(self, domain_uuid: uuid_mod.UUID) -> bytes | None:
        """The last HISTORY_BYTES the domain's console printed (its last run's when stopped)."""
        session = self._sessions.get(domain_uuid)
        if session is not None and not session.closed:
            return bytes(session.history)
        return self._last.get(domain_uuid)

    def _on_domain_event(self, event: DomainEvent) -> None:
        if event.event == "started":
            task = asyncio.ensure_future(self.record(event.uuid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif event.event == "undefined" and event.state is None:
            self._last.pop(event.uuid, None)

    async def record(self, domain_uuid: uuid_mod.UUID) -> None:
        """Keep the domain's console open and its history, viewers or not (best effort: a
        console that cannot be opened now is opened by the next viewer)."""
        assert self._opener_for is not None
        lock, users = self._locks.get(domain_uuid, (asyncio.Lock(), 0))
        self._locks[domain_uuid] = (lock, users + 1)
        try:
            async with lock:
                session = self._sessions.get(domain_uuid)
                if session is not None and not session.closed:
                    session.recording = True
                    return
                try:
                    stream = await _open_uncancellable(self._opener_for(domain_uuid))
                except (libvirt.libvirtError, AgentProblem) as err:
                    log.info("not recording the serial console of %s: %s", domain_uuid, err)
                    return
                self._last.pop(domain_uuid, None)
                session = self._session(stream, domain_uuid)
                session.recording = True
                self._sessions[domain_uuid] = session
                session.start()
                log.info("recording the serial console of %s", domain_uuid)
        finally:
            self._release_lock(domain_uuid)

    def _session(self, stream: libvirt.virStream, domain_uuid: uuid_mod.UUID) -> SerialSession:
        breaker = self._breaker_for(domain_uuid) if self._breaker_for is not None else None
        return SerialSession(stream, domain_uuid, hub=self._hub, on_closed=self._forget, breaker=breaker)

    def _release_lock(self, domain_uuid: uuid_mod.UUID) -> None:
        lock, users = self._locks[domain_uuid]
        if users <= 1:
            del self._locks[domain_uuid]
        else:
            self._locks[domain_uuid] = (lock, users - 1)

    async def join(
        self, domain_uuid: uuid_mod.UUID, viewer: SerialViewer, opener: StreamOpener
    ) -> SerialSession:
        """Attach `viewer` to the domain's session, opening the stream if there is none.

        The caller must `session.leave(viewer)` when done, whatever happens in between: the
        last viewer leaving is what releases the stream."""
        lock, users = self._locks.get(domain_uuid, (asyncio.Lock(), 0))
        self._locks[domain_uuid] = (lock, users + 1)
        try:
            async with lock:
                session = self._sessions.get(domain_uuid)
                if session is None or session.closed:
                    stream = await _open_uncancellable(opener)
                    session = self._session(stream, domain_uuid)
                    session.recording = self._opener_for is not None
                    self._sessions[domain_uuid] = session
                    session.start()
                session.add(viewer)
                return session
        finally:
            self._release_lock(domain_uuid)

    def _forget(self, session: SerialSession) -> None:
        if self._sessions.get(session.uuid) is session:
            del self._sessions[session.uuid]
            if session.history:
                self._last[session.uuid] = bytes(session.history)

    def close_all(self, reason: str) -> None:
        if self._opener_for is not None:
            self._hub.remove_listener(self._on_domain_event)
        for task in list(self._tasks):
            task.cancel()
        for session in list(self._sessions.values()):
            session.close(reason)


async def _open_uncancellable(opener: StreamOpener) -> libvirt.virStream:
    """Open a stream; if the caller is cancelled meanwhile, abort the stream once it is open."""
    task = asyncio.ensure_future(opener())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def _abort_when_open(done: asyncio.Future[libvirt.virStream]) -> None:
            if not done.cancelled() and done.exception() is None:
                _abort_stream(done.result())

        task.add_done_callback(_abort_when_open)
        raise
