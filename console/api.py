from __future__ import annotations

from typing import Any

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from console.errors import DomusError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Service errors become problem JSON: {"error": code, "detail": text, "fields": {...}}."""
    if isinstance(exc, DomusError):
        body: dict[str, Any] = {"error": exc.code, "detail": exc.detail}
        if exc.fields:
            body["fields"] = exc.fields
        return Response(body, status=exc.status)
    return drf_exception_handler(exc, context)
