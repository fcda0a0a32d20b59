"""A WebSocket lives no longer than the credential that opened it.

Both kinds of socket (events, consoles) close with CLOSE_REFUSED and the reason when their user
signs out of the session that opened them, is disabled, or loses the access the socket needs, and
when the API token that opened them is revoked or expires. Sign-outs and access changes arrive as
events (console.access.access_events); an expiry and a session that simply lapsed make no event,
so each socket also wakes at its token's expiry and every RECHECK_SECONDS to check again.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import Error as DatabaseFault
from django.utils import timezone

from console.realtime.events import ACCESS_CHANGED, SESSION_ENDED

logger = logging.getLogger(__name__)

CLOSE_REFUSED = 4403
# How often an open socket checks that its session has not lapsed (sessions expire silently).
# A check is two indexed reads; 1,000 open sockets make ~7 a second.
RECHECK_SECONDS = 300.0


def session_alive(session_key: str) -> bool:
    """Whether the session with this key still exists and has not expired, through the
    configured session engine (which knows how it stores keys)."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return bool(store.load())  # {} for a missing or expired session: a signed-in one holds the user


def credential_problem(*, user_id: int, token: Any, session_key: str | None) -> str:
    """Why the credential that opened a socket no longer holds ("" while it does)."""
    if not get_user_model().objects.filter(pk=user_id, is_active=True).exists():
        return "your account was disabled"
    if token is not None:
        token.refresh_from_db(fields=["revoked_at", "expires_at"])
        if token.revoked_at is not None:
            return "the API token was revoked"
        if token.expires_at is not None and token.expires_at <= timezone.now():
            return "the API token expired"
    elif session_key is not None and not session_alive(session_key):
        return "your session ended"
    return ""


class EndsWithItsCredential:
    """Mixed into a consumer: watch_credential() after the accept, ended_by(event) for each
    access event. The consumer says what else it needs (why_it_must_end) and how it ends
    (end_for)."""

    _watch: asyncio.Task[None] | None = None

    def opened_with(self) -> tuple[Any, str | None]:
        """The API token (None for a browser) and the session key (None for a token)."""
        scope: dict[str, Any] = self.scope  # type: ignore[attr-defined]
        token = scope.get("auth")
        session = scope.get("session")
        return token, None if token is not None or session is None else session.session_key

    def why_it_must_end(self) -> str:
        """Run in a database thread: why this socket must close now ("" while it may stay)."""
        token, session_key = self.opened_with()
        return credential_problem(user_id=self.scope["user"].pk, token=token, session_key=session_key)  # type: ignore[attr-defined]

    async def end_for(self, reason: str) -> None:
        await self.close(code=CLOSE_REFUSED, reason=reason[:120])  # type: ignore[attr-defined]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            if self._watch is not None:
                self._watch.cancel()

    def watch_credential(self) -> None:
        self._watch = asyncio.create_task(self._expiry_watch())

    async def _expiry_watch(self) -> None:
        token, _session_key = self.opened_with()
        while True:
            delay = RECHECK_SECONDS
            if token is not None and token.expires_at is not None:
                delay = min(delay, max(0.0, (token.expires_at - timezone.now()).total_seconds()) + 0.05)
            await asyncio.sleep(delay)
            try:
                reason = await database_sync_to_async(self.why_it_must_end)()
            except DatabaseFault:  # the database away: try again at the next check, never close for it
                logger.warning("could not check a socket's credential", exc_info=True)
                continue
            if reason:
                await self.end_for(reason)
                return

    async def ended_by(self, event: dict[str, Any]) -> bool:
        """Whether this access event (a sign-out, an access change) ended the socket."""
        kind = event.get("type")
        if kind == SESSION_ENDED:
            _token, session_key = self.opened_with()
            if session_key is None or session_key != event.get("session"):
                return False
            reason = "signed out"
        elif kind == ACCESS_CHANGED:
            reason = await database_sync_to_async(self.why_it_must_end)()
        else:
            return False
        if reason:
            await self.end_for(reason)
        return bool(reason)
