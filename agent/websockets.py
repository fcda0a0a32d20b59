"""WebSocket routes: the events feed and the console byte pipes (serial and VNC)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid as uuid_mod
from collections.abc import Callable

import libvirt
from aiohttp import WSCloseCode, web

from agent.api import RUNTIME, _uuid
from agent.direct_frames import DirectFrames
from agent.errors import AgentProblem, Conflict
from agent.rfb import RfbError
from agent.runtime import AgentRuntime
from agent.serial import Breaker, SerialConsoles, SerialViewer, StreamOpener, open_console_stream, send_break
from agent.vnc import GraphicsOpener, VncConsoles, VncViewer, connect_server, open_graphics_socket

log = logging.getLogger(__name__)

SERIAL_CONSOLES = web.AppKey("serial_consoles", SerialConsoles)
VNC_CONSOLES = web.AppKey("vnc_consoles", VncConsoles)
# How the VNC route reaches a domain's VNC server: libvirt's, unless a benchmark puts its own.
GraphicsOpenerFor = Callable[[AgentRuntime, libvirt.virDomain], GraphicsOpener]
VNC_OPENER: web.AppKey[GraphicsOpenerFor] = web.AppKey("vnc_opener")

_RUNNING = ("running", "blocked", "paused")


async def _drain_incoming(ws: web.WebSocketResponse) -> None:
    # Reading is what notices a client close; events subscribers send nothing useful.
    async for _msg in ws:
        pass


async def events(request: web.Request) -> web.WebSocketResponse:
    runtime = request.app[RUNTIME]
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    sub = runtime.hub.subscribe()  # before the inventory, so nothing falls in between
    reader = asyncio.ensure_future(_drain_incoming(ws))
    reason = "client closed"
    try:
        try:
            await ws.send_str((await runtime.inventory()).model_dump_json())
            # What completes the picture (every domain's addresses), before any queued change.
            for event in runtime.hub.inventory_followers():
                await ws.send_str(event.model_dump_json())
        except AgentProblem as err:
            # The socket is already upgraded: say why in the close frame (at most 123 bytes).
            reason = f"{err.code}: {err.detail}"[:120]
            return ws
        while not reader.done():
            getter = asyncio.ensure_future(sub.queue.get())
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            message = getter.result()
            if message is None:
                reason = "event queue overflow" if sub.dropped else "agent stopping"
                break
            await ws.send_str(message)
    except ConnectionResetError:
        log.debug("events subscriber went while it was being sent to")  # (as a close: nothing amiss)
    finally:
        runtime.hub.unsubscribe(sub)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if not ws.closed:
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=reason.encode())
    return ws


async def _running_domain(request: web.Request, console: str) -> tuple[uuid_mod.UUID, libvirt.virDomain]:
    """The domain a console route is for; 404 or 409 (before the upgrade) unless it runs."""
    domain_uuid = _uuid(request)
    dom, state = await request.app[RUNTIME].domains.state(domain_uuid)
    if state not in _RUNNING:
        raise Conflict(f"domain {domain_uuid} is {state}; its {console} console needs it running")
    return domain_uuid, dom


def _viewer_of(request: web.Request) -> tuple[str, bool]:
    """Who watches and whether they may type, as the (authenticated) console says."""
    return request.query.get("user", "")[:64], request.query.get("mode", "interact") == "interact"


async def serial_console(request: web.Request) -> web.WebSocketResponse:
    """A viewer of the domain's one shared serial console session (see agent.serial)."""
    runtime = request.app[RUNTIME]
    domain_uuid, dom = await _running_domain(request, "serial")

    async def open_stream() -> libvirt.virStream:
        return await runtime.conn.call(lambda c: open_console_stream(c, dom), what="opening serial console")

    ws = web.WebSocketResponse(heartbeat=30)
    name, can_interact = _viewer_of(request)
    viewer = SerialViewer(ws, name=name, can_interact=can_interact)
    session = await request.app[SERIAL_CONSOLES].join(domain_uuid, viewer, open_stream)
    try:
        # From here on the viewer holds the session (and its stream) open: whatever happens,
        # leaving it is what releases the stream once nobody else is watching.
        await ws.prepare(request)
        reason = await viewer.run(session)
        log.info("serial console viewer of %s closed: %s", domain_uuid, reason)
    finally:
        session.leave(viewer)
    if not ws.closed:
        # A close frame carries at most 123 bytes of reason: cut it on a character boundary.
        message = viewer.reason.encode()[:120].decode(errors="ignore").encode()
        await ws.close(code=WSCloseCode.GOING_AWAY, message=message)
    return ws


def _libvirt_graphics(runtime: AgentRuntime, dom: libvirt.virDomain) -> GraphicsOpener:
    async def open_socket() -> socket.socket:
        return await runtime.conn.call(lambda _c: open_graphics_socket(dom), what="opening the VNC console")

    return open_socket


async def vnc_console(request: web.Request) -> web.WebSocketResponse:
    """A viewer of the domain's graphical console: its own shared VNC connection (agent.vnc)."""
    runtime = request.app[RUNTIME]
    domain_uuid, dom = await _running_domain(request, "graphical")
    try:  # the VNC server answers before the upgrade, so a failure is an HTTP problem
        server, server_init = await connect_server(request.app[VNC_OPENER](runtime, dom))
    except (RfbError, OSError, TimeoutError) as err:
        raise Conflict(
            f"the VNC console of domain {domain_uuid} cannot be opened: {err or 'timed out'}"
        ) from err
    consoles = request.app[VNC_CONSOLES]
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4 * 1024 * 1024)
    name, can_interact = _viewer_of(request)
    viewer = VncViewer(ws, name=name, can_interact=can_interact)
    try:
        await ws.prepare(request)
        frames = DirectFrames(request, ws)
        reason = await viewer.run(consoles.sharing(domain_uuid), server, server_init, frames)
        log.info("VNC viewer of %s closed: %s", domain_uuid, reason)
    finally:
        server.close()
        consoles.release(domain_uuid)
    if not ws.closed:
        await ws.close(
            code=WSCloseCode.GOING_AWAY, message=reason.encode()[:120].decode(errors="ignore").encode()
        )
    return ws


async def serial_log(request: web.Request) -> web.Response:
    """The last output of the domain's serial console (of its last run, once stopped)."""
    domain_uuid = _uuid(request)
    await request.app[RUNTIME].domains.state(domain_uuid)  # 404 for an unknown domain
    history = request.app[SERIAL_CONSOLES].history(domain_uuid)
    return web.Response(body=history or b"", content_type="application/octet-stream")


def _opener_for(runtime: AgentRuntime) -> Callable[[uuid_mod.UUID], StreamOpener]:
    def opener_for(domain_uuid: uuid_mod.UUID) -> StreamOpener:
        async def open_stream() -> libvirt.virStream:
            dom, state = await runtime.domains.state(domain_uuid)
            if state not in _RUNNING:
                raise Conflict(f"domain {domain_uuid} is {state}")
            return await runtime.conn.call(
                lambda c: open_console_stream(c, dom), what="opening serial console"
            )

        return open_stream

    return opener_for


def _breaker_for(runtime: AgentRuntime) -> Callable[[uuid_mod.UUID], Breaker]:
    def breaker_for(domain_uuid: uuid_mod.UUID) -> Breaker:
        async def send() -> None:
            dom, _state = await runtime.domains.state(domain_uuid)
            await runtime.conn.call(lambda _c: send_break(dom), what="sending a break")

        return send

    return breaker_for


async def _record_running(app: web.Application) -> None:
    """At start-up: record the consoles of the domains already running."""
    consoles, runtime = app[SERIAL_CONSOLES], app[RUNTIME]
    if not runtime.domains.local_files:
        return  # the test driver has no consoles
    try:
        running = [info.uuid for info in await runtime.domains.list() if info.state in _RUNNING]
    except AgentProblem as err:  # best effort, like each recording: never a reason not to start
        log.warning("cannot list the running domains to record their consoles: %s", err)
        return
    for domain_uuid in running:
        await consoles.record(domain_uuid)


async def _close_serial_consoles(app: web.Application) -> None:
    app[SERIAL_CONSOLES].close_all("agent stopping")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/events", events)
    app.router.add_get("/v1/domains/{uuid}/console/serial", serial_console)
    app.router.add_get("/v1/domains/{uuid}/console/serial/log", serial_log)
    app.router.add_get("/v1/domains/{uuid}/console/vnc", vnc_console)
    app[VNC_CONSOLES] = VncConsoles()
    app[VNC_OPENER] = _libvirt_graphics
    runtime = app[RUNTIME]  # make_app sets it first
    # Record every running domain's console, except on the test driver (it has none).
    recording = runtime.domains.local_files
    app[SERIAL_CONSOLES] = SerialConsoles(
        runtime.hub, _opener_for(runtime) if recording else None, breaker_for=_breaker_for(runtime)
    )
    app.on_startup.append(_record_running)
    app.on_shutdown.append(_close_serial_consoles)
