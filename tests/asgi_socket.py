"""A WebSocket driven through console.asgi's application as uvicorn drives it, whose browser
can go away: Channels' WebsocketCommunicator cannot make a send fail, and uvicorn's does once
the client has gone (ClientDisconnected, an OSError, which uvicorn then swallows)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected


class GoingSocket:
    def __init__(self, path: str, query: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.scope = {
            "type": "websocket",
            "path": path,
            "query_string": query.encode(),
            "headers": headers,
            "subprotocols": [],
        }
        self.gone = False  # from now on every send fails, as uvicorn's does
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._accepted = asyncio.Event()
        self._app: asyncio.Future[Any] | None = None

    async def _receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        if self.gone:
            raise ClientDisconnected
        if message["type"] == "websocket.accept":
            self._accepted.set()

    async def connect(self) -> None:
        """Open it, and wait until the consumer accepts."""
        from console.asgi import application

        await self._inbox.put({"type": "websocket.connect"})
        self._app = asyncio.ensure_future(application(self.scope, self._receive, self._send))
        await asyncio.wait_for(self._accepted.wait(), 10)

    async def close(self) -> None:
        """The browser's close reaches the consumer (late: after whatever was sent meanwhile);
        returns when the application has ended."""
        assert self._app is not None
        await self._inbox.put({"type": "websocket.disconnect", "code": 1001})
        with contextlib.suppress(ClientDisconnected):
            await asyncio.wait_for(self._app, 10)
