"""The aiohttp application and the agent's serve loop."""

from __future__ import annotations

import asyncio
import logging
import signal

import libvirtaio
from aiohttp import web

from agent import api, websockets
from agent.runtime import AgentConfig, AgentRuntime

log = logging.getLogger(__name__)


def register_libvirt_event_loop() -> None:
    """Drive libvirt's event loop from asyncio; must happen before any connection is opened."""
    libvirtaio.virEventRegisterAsyncIOImpl(loop=asyncio.get_running_loop())


def make_app(runtime: AgentRuntime) -> web.Application:
    app = web.Application(
        middlewares=[api.log_requests, api.problems, api.make_auth(runtime.config.secret)],
        client_max_size=1024 * 1024,
    )
    app[api.RUNTIME] = runtime
    api.add_routes(app)
    websockets.add_routes(app)
    return app


async def serve(config: AgentConfig) -> None:
    register_libvirt_event_loop()
    runtime = AgentRuntime(config)
    await runtime.start()
    runner = web.AppRunner(make_app(runtime), access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, config.listen, config.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"domus-agent listening on http://{config.listen}:{config.port}", flush=True)
    log.info("listening on http://%s:%d (libvirt %s)", config.listen, config.port, config.uri)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await runtime.hub.stop()  # ends the event streams, so open sockets do not hold up the exit
        await runner.cleanup()
        await runtime.stop()
