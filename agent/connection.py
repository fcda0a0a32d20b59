"""The agent's one libvirt connection: open, keepalive, reconnect with backoff.

libvirt's event loop is driven by asyncio (libvirtaio), so close, lifecycle and stream
callbacks run on the event loop; blocking API calls go through `call()`, which runs them in a
worker thread and translates libvirt errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import libvirt

from agent.errors import LibvirtUnavailable, from_libvirt, is_connection_lost

log = logging.getLogger(__name__)

T = TypeVar("T")
ConnectedHook = Callable[[libvirt.virConnect], Awaitable[None]]
DisconnectHook = Callable[[libvirt.virConnect], None]  # blocking; runs in a worker thread

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0


def _silence_default_error_handler() -> None:
    # libvirt prints every error to stderr by default; errors are raised and logged instead.
    def _ignore(_ctx: object, _err: object) -> None:
        return None

    libvirt.registerErrorHandler(_ignore, None)


class LibvirtConnection:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._hooks: list[ConnectedHook] = []
        self._disconnect_hooks: list[DisconnectHook] = []
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        self._attempt = 0

    def on_connected(self, hook: ConnectedHook) -> None:
        """Run `hook` after every (re)connection, before requests are served on it."""
        self._hooks.append(hook)

    def on_disconnecting(self, hook: DisconnectHook) -> None:
        """Run `hook` on a lost connection before it is closed for a new one, e.g. to deregister
        the event callbacks an `on_connected` hook registered on it (they would keep it alive)."""
        self._disconnect_hooks.append(hook)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def get(self) -> libvirt.virConnect:
        if self._conn is None:
            raise LibvirtUnavailable(
                f"libvirt connection to {self.uri} is down; reconnecting "
                f"(attempt {self._attempt}), retry shortly"
            )
        return self._conn

    async def open(self) -> None:
        """First connection, at start-up: failures propagate."""
        _silence_default_error_handler()
        await self._connect()

    async def _connect(self) -> None:
        conn = await asyncio.to_thread(libvirt.open, self.uri)
        try:
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError as err:
            # Local drivers (test://) have no keepalive; that is fine.
            log.debug("keepalive not available on %s: %s", self.uri, err)
        conn.registerCloseCallback(self._closed, None)
        for hook in self._hooks:
            await hook(conn)
        self._conn = conn
        self._attempt = 0
        log.info("connected to libvirt at %s", self.uri)

    def _closed(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        log.warning("libvirt connection to %s closed (reason %d)", self.uri, reason)
        # Never close a connection from inside its own close callback (it deadlocks).
        asyncio.get_running_loop().call_soon(self.connection_lost)

    def connection_lost(self) -> None:
        """Forget the current connection and reconnect in the background."""
        if self._closing or self._conn is None:
            return
        old, self._conn = self._conn, None
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect(old))

    def _dispose(self, conn: libvirt.virConnect) -> None:
        for hook in self._disconnect_hooks:
            hook(conn)
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    async def _reconnect(self, old: libvirt.virConnect) -> None:
        await asyncio.to_thread(self._dispose, old)
        delay = BACKOFF_INITIAL_S
        while not self._closing:
            self._attempt += 1
            try:
                await self._connect()
                return
            except libvirt.libvirtError as err:
                log.warning(
                    "reconnect to %s failed (attempt %d, next in %.1fs): %s",
                    self.uri,
                    self._attempt,
                    delay,
                    err.get_error_message(),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def call(self, fn: Callable[[libvirt.virConnect], T], *, what: str) -> T:
        """Run blocking `fn(conn)` in a worker thread; libvirt errors become AgentProblems."""
        conn = self.get()
        try:
            return await asyncio.to_thread(fn, conn)
        except libvirt.libvirtError as err:
            if is_connection_lost(err):
                self.connection_lost()
            raise from_libvirt(err, what=what) from err

    async def close(self) -> None:
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            # No disconnect hooks here: the agent is stopping, and a connection really freed now
            # would hand libvirt's event loop work after asyncio's loop has closed.
            try:
                conn.unregisterCloseCallback()
                conn.close()
            except libvirt.libvirtError as err:
                log.debug("closing libvirt connection: %s", err)
