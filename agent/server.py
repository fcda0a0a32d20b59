"""The aiohttp application and the agent's serve loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl

import libvirtaio
from aiohttp import web

from agent import api, websockets
from agent.idempotency import IdempotencyStore, make_idempotency
from agent.runtime import AgentConfig, AgentRuntime

log = logging.getLogger(__name__)


def register_libvirt_event_loop() -> None:
    """Drive libvirt's event loop from asyncio; must happen before any connection is opened."""
    libvirtaio.virEventRegisterAsyncIOImpl(loop=asyncio.get_running_loop())


def make_app(runtime: AgentRuntime) -> web.Application:
    app = web.Application(
        middlewares=[
            api.log_requests,
            api.problems,
            api.make_auth(runtime.keys),
            make_idempotency(IdempotencyStore()),  # inside auth: keys are per calling console
        ],
        client_max_size=1024 * 1024,
    )
    app[api.RUNTIME] = runtime
    api.add_routes(app)
    websockets.add_routes(app)
    return app


def tls_context(runtime: AgentRuntime) -> ssl.SSLContext | None:
    """TLS with the agent's own certificate when it has one (see `domus-agent init`)."""
    identity = runtime.identity
    if identity is None or not identity.has_certificate():
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(identity.cert_path, identity.key_path)
    return context


async def serve(config: AgentConfig) -> None:
    register_libvirt_event_loop()
    runtime = AgentRuntime(config)
    context = tls_context(runtime)
    await runtime.start()
    # Bodies are read in pieces of up to 1 MiB (aiohttp's 64 KiB default made an upload's
    # 1 GiB sixteen times as many reads: bench/upload_bench.py).
    runner = web.AppRunner(make_app(runtime), access_log=None, shutdown_timeout=5, read_bufsize=1 << 20)
    await runner.setup()
    site = web.TCPSite(runner, config.listen, config.port, ssl_context=context)
    await site.start()
    # What start-up loaded lives as long as the agent: keep it out of the collector's scans
    # (they made the slowest inventory reads several times the typical one).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scheme = "https" if context else "http"
    print(f"domus-agent listening on {scheme}://{config.listen}:{config.port}", flush=True)
    log.info("listening on %s://%s:%d (libvirt %s)", scheme, config.listen, config.port, config.uri)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await runtime.hub.stop()  # ends the event streams, so open sockets do not hold up the exit
        await runner.cleanup()
        await runtime.stop()
