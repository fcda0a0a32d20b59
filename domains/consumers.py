from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs

import aiohttp
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from agent.client import AgentClient, AgentError
from agent.console_pipe import ConsolePipe
from agent.sharing import request_type
from console.audit.services import audit_record
from console.realtime.consumers import LeavesNothingBehind
from console.realtime.credentials import CLOSE_REFUSED, EndsWithItsCredential
from console.realtime.dispatch import SkipsDbCleanup
from console.realtime.events import ACCESS_GROUP
from console.websocket_server import EXTENSION as FRAMES_EXTENSION
from domains.consoles import TicketRefused, console_still_allowed, console_ticket_redeem
from domains.models import ConsoleTicket

logger = logging.getLogger(__name__)

CLOSE_AGENT = 4502


class ConsoleConsumer(EndsWithItsCredential, LeavesNothingBehind, SkipsDbCleanup, AsyncWebsocketConsumer):  # type: ignore[misc]
    """/ws/console/?ticket=...: pipes bytes between the browser and the agent's console socket.

    Bytes never go through the channel layer: this consumer holds its own WebSocket to the agent.
    Served by console.websocket_server (as in production), the agent's bytes do not go through
    this consumer either: the pipe writes them to the browser's socket itself.
    A serial watcher's keystrokes are dropped here; a VNC watcher's bytes go on (the RFB
    protocol needs its requests for screen updates) and the agent drops its input events.
    """

    agent_ws: ConsolePipe | None = None
    # The spent ticket, by id only: an open console keeps no rows (the domain's and host's
    # JSON would cost each console kilobytes); the rare access check reads them again.
    ticket_id: int | None = None
    view_only = True  # until a ticket says otherwise: nothing typed reaches the guest
    kind = ConsoleTicket.Kind.SERIAL
    pump: asyncio.Task[None] | None = None
    stack: contextlib.AsyncExitStack | None = None
    # Keystrokes, and the access changes every open console hears (console.realtime.dispatch).
    no_db_cleanup = frozenset({"websocket.receive", "domus.event"})

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        key, domain_id = (query.get("ticket") or [""])[0], (query.get("domain") or [""])[0]
        try:
            ticket = await database_sync_to_async(console_ticket_redeem)(
                key=key, user=self.scope.get("user"), domain_id=domain_id
            )
        except TicketRefused as exc:
            await database_sync_to_async(audit_record)(
                action="console.open",
                actor=self.scope.get("user"),
                ip=self._ip(),
                token=self.scope.get("auth"),
                object_type="domain",
                outcome="denied",
                detail=str(exc),
            )
            # Accept then close, so the browser sees the reason instead of a bare 403.
            await self.accept()
            await self.close(code=CLOSE_REFUSED, reason=str(exc))
            return
        host = ticket.domain.host
        self.stack = contextlib.AsyncExitStack()
        try:
            # A console needs no HTTP session: only where the agent is and how to prove who
            # this is (agent.console_pipe).
            client = AgentClient(host.url, host.secret, fingerprint=host.fingerprint)
            self.agent_ws = await self.stack.enter_async_context(
                client.open_console(
                    ticket.domain.uuid, kind=ticket.kind, user=ticket.user.get_username(), mode=ticket.mode
                )
            )
        except (AgentError, aiohttp.ClientError, OSError) as exc:
            detail = getattr(exc, "detail", str(exc))
            await self._close_client()
            await self.accept()
            await self.close(code=CLOSE_AGENT, reason=f"console unavailable: {detail}"[:120])
            return
        self.view_only = ticket.mode != ConsoleTicket.Mode.INTERACT
        self.kind = ticket.kind
        self.ticket_id = ticket.pk
        await database_sync_to_async(audit_record)(
            action="console.open",
            actor=ticket.user,
            ip=self._ip(),
            token=self.scope.get("auth"),
            obj=ticket.domain,
            changes={"kind": ticket.kind, "mode": ticket.mode},
        )
        await self.accept()
        sink = self.scope.get("extensions", {}).get(FRAMES_EXTENSION)
        if sink is not None:  # served by console.websocket_server: bytes skip ASGI
            self.agent_ws.attach(sink)
        # Access changes and sign-outs reach this socket: it closes when its user may no longer
        # use this console, or the session (or token) that opened it ends.
        await self.join_group(ACCESS_GROUP)
        self.watch_credential()
        self.pump = asyncio.create_task(self._agent_to_browser())

    async def domus_event(self, message: dict[str, Any]) -> None:
        if self.ticket_id is None or self.agent_ws is None:
            return
        await self.ended_by(message.get("event", {}))

    def why_it_must_end(self) -> str:
        ticket = self._ticket()
        if ticket is None:
            return "the domain was deleted"
        return super().why_it_must_end() or console_still_allowed(ticket=ticket)

    async def end_for(self, reason: str) -> None:
        await self._cut(reason)

    def _ticket(self) -> ConsoleTicket | None:
        if self.ticket_id is None:
            return None
        return ConsoleTicket.objects.select_related("domain", "user").filter(pk=self.ticket_id).first()

    async def _cut(self, reason: str) -> None:
        ticket = await database_sync_to_async(self._ticket)()
        await database_sync_to_async(audit_record)(
            action="console.close",
            actor=ticket.user if ticket else None,
            ip=self._ip(),
            obj=ticket.domain if ticket else None,
            outcome="denied",
            detail=reason,
        )
        await self.close(code=CLOSE_REFUSED, reason=reason[:120])
        await self._close_client()

    def _ip(self) -> str | None:
        client = self.scope.get("client") or [None]
        return str(client[0]) if client[0] else None

    async def _agent_to_browser(self) -> None:
        agent_ws = self.agent_ws
        assert agent_ws is not None
        reason = "console closed by the host"
        async for msg in agent_ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self.send(bytes_data=msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:  # a presence notice: who watches, who types
                await self.send(text_data=msg.data)
            else:
                break
        if self.agent_ws is None:
            return  # cut by this console (access withdrawn, signed out): already closed, with why
        if agent_ws.close_code not in (None, 1000) and agent_ws.exception():
            reason = f"console lost: {agent_ws.exception()}"
        await self.close(code=1000, reason=reason[:120])

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Binary frames are keystrokes (serial) or the RFB protocol (vnc); text frames are
        requests ("take-control", "break")."""
        if self.agent_ws is None or self.agent_ws.closed:
            return
        try:
            if bytes_data is not None:
                if self.view_only and self.kind == ConsoleTicket.Kind.SERIAL:
                    return  # a watcher's keystrokes are dropped here, before the agent
                await self.agent_ws.send_bytes(bytes_data)
            elif text_data is not None and not self.view_only and (kind := request_type(text_data)):
                await self.agent_ws.send_str(json.dumps({"type": kind}))  # take-control, break
        except (aiohttp.ClientError, ConnectionError) as exc:
            await self.close(code=CLOSE_AGENT, reason=f"console lost: {exc}"[:120])

    async def disconnect(self, code: int) -> None:
        await self.leave_groups()
        if self.pump is not None and self.pump is not asyncio.current_task():
            self.pump.cancel()
        await self._close_client()

    async def _close_client(self) -> None:
        self.agent_ws = None
        if self.stack is not None:
            stack, self.stack = self.stack, None
            await stack.aclose()
