"""WebSocket authentication: by API token for scripts that hold no session cookie; by session
for browsers, where a user with a second factor counts only once this session has given it."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser
from django_otp import DEVICE_ID_SESSION_KEY

from console.access.login.totp import totp_enrolled
from console.access.selectors import api_token_resolve


class ApiTokenWebSocketMiddleware:
    """`Authorization: Token <key>` on the handshake authenticates the socket as the token's
    user (browsers cannot set that header and use their session instead). A bad token leaves
    the socket anonymous, which every consumer refuses."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin1").split()
        if len(header) == 2 and header[0].lower() == "token":
            client = scope.get("client") or [None]
            token = await database_sync_to_async(api_token_resolve)(header[1], ip=client[0])
            if token is not None:
                scope = {**scope, "user": token.user, "auth": token}
        elif await database_sync_to_async(_second_factor_missing)(scope):
            scope = {**scope, "user": AnonymousUser()}
        return await self.app(scope, receive, send)


def _second_factor_missing(scope: dict[str, Any]) -> bool:
    user = scope.get("user")
    if user is None or not user.is_authenticated:
        return False
    session = scope.get("session")
    verified = session is not None and bool(session.get(DEVICE_ID_SESSION_KEY))
    return not verified and totp_enrolled(user)
