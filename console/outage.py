"""What a request gets when something underneath it fails: `handler500`.

An outage of PostgreSQL or Redis is an error like any other (DESIGN.md): the API and /healthz
answer their JSON error shape with 503 and say what is down, and pages get a plain page saying
the same; never Django's HTML 500. Any other unexpected error is a JSON 500 for the API.

The page is written out here, not rendered from a template: the base template reads the signed-in
user, which needs the very database that may be away.
"""

from __future__ import annotations

import html
import sys

import redis
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from kombu.exceptions import OperationalError as BrokerError

RETRY_AFTER_SECONDS = 5


def what_is_down(exc: BaseException | None) -> str | None:
    """The service an exception says is unreachable ("the database", "Redis"), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # the cause may be wrapped (Celery, Channels)
        seen.add(id(exc))
        # Lost or refused connections only: bad data (DataError, IntegrityError) and the
        # transaction it aborted (InternalError) are errors of the request, not an outage.
        if isinstance(exc, OperationalError | InterfaceError):
            return "the database"
        if isinstance(exc, (redis.RedisError, BrokerError)):
            return "Redis"
        exc = exc.__cause__ or exc.__context__
    return None


def wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def server_error(request: HttpRequest) -> HttpResponse:
    exc = sys.exc_info()[1]
    down = what_is_down(exc)
    if down is not None:
        detail = (
            f"{down[0].upper()}{down[1:]} is unreachable ({type(exc).__name__}: {exc}), so the "
            "request could not be completed. Try again in a moment."
        )
        response = _answer(request, 503, "unavailable", detail)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    detail = "Internal error: the request could not be completed; the console's log has the details."
    return _answer(request, 500, "internal", detail)


def _answer(request: HttpRequest, status: int, code: str, detail: str) -> HttpResponse:
    if wants_json(request):
        return JsonResponse({"error": code, "detail": detail}, status=status)
    title = "Temporarily unavailable" if status == 503 else "Something went wrong"
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Domus: "
        f"{title}</title><body style='font-family:sans-serif;margin:3em'><h1>{title}</h1>"
        f"<p>{html.escape(detail)}</p><p><a href='{html.escape(request.path)}'>Try again</a></p>"
    )
    return HttpResponse(body, status=status, content_type="text/html; charset=utf-8")
