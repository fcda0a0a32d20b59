"""Downloading a volume: its bytes stream from the host's agent through the console to the
browser (or `curl -H 'Authorization: Token ...'`), a chunk at a time, never held whole in memory
nor written to the console's disk. A `Range: bytes=N-` request resumes an interrupted download
where it stopped (206 with Content-Range). Who may: those who manage the host, and those who see
the volume on its pool's page (domains.volumes' rule of whose volumes are seen)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework import exceptions
from rest_framework.request import Request

from agent.client import AgentError
from console.access.authentication import ApiTokenAuthentication
from console.errors import DomusError
from hosts.agent import agent_client
from hosts.models import Host
from hosts.pool_volumes import agent_refusal, may_download
from hosts.pools import pool_of, volume_path
from hosts.selectors import host_list

CHUNK = 1 << 20
RANGE_RE = re.compile(r"^bytes=(\d+)-$")
# Reading a chunk may wait this long for the agent (a slow network file system), not longer.
READ_TIMEOUT_SECONDS = 120.0


def _problem(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"error": "download", "detail": detail}, status=status)


def _user(request: HttpRequest) -> Any:
    """The session's user, or the API token's (`Authorization: Token <key>`)."""
    try:
        found = ApiTokenAuthentication().authenticate(Request(request))
    except exceptions.AuthenticationFailed:
        return None
    return found[0] if found else request.user


def _allowed(request: HttpRequest, host_id: int, pool: str, volume: str) -> Host | HttpResponse:
    """The host, when the caller may read this volume of its pool; else the answer to give."""
    user = _user(request)
    if user is None:
        return _problem(401, "Invalid, expired or revoked token.")
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    host = host_list(user=user).filter(pk=host_id).first()
    if host is None:
        return _problem(404, "No such host.")
    try:
        path = volume_path(pool_of(host, pool), volume)
    except DomusError as exc:
        return _problem(exc.status, exc.detail)
    if "/" in volume or volume.startswith(".") or not may_download(user, host, path):
        return _problem(404, f"No volume {volume!r} you may read in {pool}.")
    return host


async def volume_download(
    request: HttpRequest, host_id: int, pool: str, volume: str
) -> HttpResponse | StreamingHttpResponse:
    allowed = await sync_to_async(_allowed)(request, host_id, pool, volume)
    if isinstance(allowed, HttpResponse):
        return allowed
    host = allowed
    offset = 0
    if (wanted := request.headers.get("Range")) is not None:
        match = RANGE_RE.match(wanted.strip())
        if match is None:  # only "from here to the end", which is what resuming asks
            return _problem(416, "Only a range of the form bytes=N- is served.")
        offset = int(match.group(1))
    try:
        # Closed here if opening fails; once open, the stream's own end closes them (body()).
        async with contextlib.AsyncExitStack() as opening:
            client = await opening.enter_async_context(agent_client(host, timeout=READ_TIMEOUT_SECONDS))
            upstream = await opening.enter_async_context(client.download_volume(pool, volume, offset=offset))
            stack = opening.pop_all()
    except AgentError as exc:
        refusal = agent_refusal(host, exc)
        status = 416 if offset and exc.status == 416 else refusal.status
        return _problem(status, refusal.detail)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                yield chunk
        finally:  # the whole file sent, the browser gone, or the agent's stream broken
            await stack.aclose()

    response = StreamingHttpResponse(body(), status=upstream.status, content_type="application/octet-stream")
    for header in ("Content-Length", "Content-Range", "Accept-Ranges"):
        if header in upstream.headers:
            response[header] = upstream.headers[header]
    response["Content-Disposition"] = f'attachment; filename="{volume}"'
    return response
