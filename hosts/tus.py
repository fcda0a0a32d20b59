"""An upload's bytes, streamed: tus's PATCH, served before Django sees the request.

Django's ASGI handler reads a request's whole body before calling a view (into memory, then a
temporary file past FILE_UPLOAD_MAX_MEMORY_SIZE): an ISO would be copied onto the console's disk
first, which is what this console must never do. So `UploadPatch` takes PATCH requests to
/api/v1/uploads/<id>/ at the ASGI level and hands every other request to Django. The body goes
on to the host's agent a piece at a time as uvicorn receives it (its flow control holds the
sender back while the agent writes), so the console holds a few hundred KiB of an upload at
most. The caller is authenticated as on the events socket (session with its second factor, or
`Authorization: Token`); only the one who created the upload may send its bytes, and only while
they still hold `media.upload` on its host. What the agent confirms is recorded as the upload's
offset whether the request ends well or the sender goes away mid-body; the next PATCH (after a
HEAD) goes on from there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async

from agent.client import AgentConflict, AgentError, AgentUnreachable
from console.access.models import ApiToken
from console.access.websocket import ApiTokenWebSocketMiddleware
from hosts.agent import agent_client, run_agent
from hosts.models import Upload
from hosts.uploads import may_send, upload_forget_on_agent, upload_observe

logger = logging.getLogger(__name__)

UPLOAD_PATH = re.compile(r"^/api/v1/uploads/([0-9a-fA-F-]{32,36})/?$")
TUS_VERSION = "1.0.0"
# A piece of the body may wait this long for the sender or the agent, not longer.
READ_TIMEOUT_SECONDS = 120.0
# Pieces as uvicorn hands them over are 64 KiB or less; the agent is sent pieces of up to this.
COALESCE = 1 << 20

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class UploadPatch:
    """ASGI: PATCH /api/v1/uploads/<id>/ streamed to the agent; everything else to `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.patch = AuthMiddlewareStack(ApiTokenWebSocketMiddleware(_patch))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "PATCH" and UPLOAD_PATH.match(scope["path"]):
            await self.patch(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _answer(
    send: Send, status: int, *, offset: int | None = None, problem: dict[str, Any] | None = None
) -> None:
    headers = [(b"tus-resumable", TUS_VERSION.encode()), (b"cache-control", b"no-store")]
    if offset is not None:
        headers.append((b"upload-offset", str(offset).encode()))
    body = b""
    if problem is not None:
        body = json.dumps(problem).encode()
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin1"))
    return None


def _problem(code: str, detail: str) -> dict[str, Any]:
    return {"error": code, "detail": detail}


def _upload_for(user: Any, token: Any, raw_id: str) -> tuple[Upload | None, int, str]:
    """The upload, or why not: (None, status, detail)."""
    if not getattr(user, "is_authenticated", False):
        return None, 401, "Sign in, or send Authorization: Token <key>."
    if isinstance(token, ApiToken) and token.read_only:
        return None, 403, "This API token is read-only."
    try:
        key = uuid.UUID(raw_id)
    except ValueError:
        return None, 404, "No such upload."
    upload = Upload.objects.select_related("host").filter(pk=key).first()
    if upload is None:
        return None, 404, "No such upload."
    why = may_send(user, upload)
    if why is not None:
        return None, (404 if why == "No such upload." else 409 if upload.done else 403), why
    return upload, 200, ""


def _headers_refusal(
    upload: Upload, version: str | None, raw_offset: str | None, body_length: int | None
) -> tuple[int, int, str]:
    """(offset, 0, "") for a PATCH whose headers may go on; else (0, status, why). The body's
    length, when known, must not take the upload past its Upload-Length."""
    if version is not None and version != TUS_VERSION:
        return 0, 412, f"Only tus {TUS_VERSION} is spoken here."
    if raw_offset is None or not raw_offset.isdigit():
        return 0, 400, "Send Upload-Offset: the offset the bytes start at."
    offset = int(raw_offset)
    if body_length is not None and upload.length is not None and offset + body_length > upload.length:
        return 0, 400, f"The body would go past Upload-Length ({upload.length})."
    return offset, 0, ""


async def _patch(scope: Scope, receive: Receive, send: Send) -> None:
    match = UPLOAD_PATH.match(scope["path"])
    assert match is not None  # routed here by UploadPatch
    upload, status, why = await database_sync_to_async(_upload_for)(
        scope.get("user"), scope.get("auth"), match.group(1)
    )
    if upload is None:
        await _answer(send, status, problem=_problem("upload", why))
        return
    declared = _header(scope, b"content-length")
    offset, status, why = _headers_refusal(
        upload,
        _header(scope, b"tus-resumable"),
        _header(scope, b"upload-offset"),
        int(declared) if declared is not None and declared.isdigit() else None,
    )
    if status:
        await _answer(send, status, problem=_problem("upload", why))
        return
    gone = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal gone
        pending: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True  # what was received so far is written; the rest comes in a later PATCH
                break
            piece = message.get("body", b"")
            if piece:
                pending.append(piece)
                size += len(piece)
                if size >= COALESCE:
                    yield b"".join(pending)
                    pending, size = [], 0
            if not message.get("more_body", False):
                break
        if pending:
            yield b"".join(pending)

    host, pool, key = upload.host, upload.pool, upload.pk.hex
    try:
        async with agent_client(host, timeout=READ_TIMEOUT_SECONDS) as client:
            try:
                result = await client.upload_chunk(pool, key, offset, body())
            except AgentConflict as exc:
                # Most often: the offset is not where the agent is. Say where it is.
                try:
                    now = await client.upload_status(pool, key)
                except AgentError:
                    raise exc from None
                await database_sync_to_async(upload_observe)(upload, now)
                await _answer(send, 409, offset=now.offset, problem=_problem("upload", exc.detail))
                return
            recorded = await database_sync_to_async(upload_observe)(upload, result)
            if recorded.state == Upload.State.COMPLETE:
                with contextlib.suppress(AgentError):  # else the agent's own expiry removes it
                    await client.delete_upload(pool, key)  # its record only: the volume stays
    except AgentUnreachable as exc:
        await _answer(
            send, 503, problem=_problem("upload", f"{host.name} cannot be reached now: {exc.detail}")
        )
        return
    except AgentError as exc:
        status = exc.status if exc.status in (400, 404, 409, 413, 507) else 502
        await _answer(send, status, problem=_problem("upload", exc.detail))
        return
    if gone:
        logger.info("upload %s: sender went away at %d of %s bytes", key, result.offset, upload.length)
        return
    await _answer(send, 204, offset=recorded.offset)


def patch_buffered(
    user: Any, token: Any, raw_id: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], dict[str, Any] | None]:
    """The same PATCH for a request whose body the server already read (Django reached some
    other way than console.asgi: WSGI, or the test client): (status, headers, problem). The
    bytes go to the agent in one piece; nothing is kept here."""
    upload, status, why = _upload_for(user, token, raw_id)
    if upload is None:
        return status, {}, _problem("upload", why)
    offset, status, why = _headers_refusal(
        upload, headers.get("Tus-Resumable"), headers.get("Upload-Offset"), len(body)
    )
    if status:
        return status, {}, _problem("upload", why)
    try:
        result = run_agent(
            upload.host,
            lambda client: client.upload_chunk(upload.pool, upload.pk.hex, offset, body),
            timeout=READ_TIMEOUT_SECONDS,
        )
    except AgentConflict as exc:
        return 409, {}, _problem("upload", exc.detail)
    except AgentUnreachable as exc:
        return 503, {}, _problem("upload", f"{upload.host.name} cannot be reached now: {exc.detail}")
    except AgentError as exc:
        return (
            (exc.status if exc.status in (400, 404, 409, 413, 507) else 502),
            {},
            _problem("upload", exc.detail),
        )
    recorded = upload_observe(upload, result)
    if recorded.state == Upload.State.COMPLETE:
        upload_forget_on_agent(recorded)
    return 204, {"Upload-Offset": str(recorded.offset)}, None
