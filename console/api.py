from __future__ import annotations

from typing import Any

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from console.audit.services import audit_record_request
from console.errors import DomusError, PermissionDenied


def _action_of(context: dict[str, Any]) -> str:
    view = context.get("view")
    basename = getattr(view, "basename", None) or "api"
    return f"{basename}.{getattr(view, 'action', None) or 'request'}"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Service errors become problem JSON: {"error": code, "detail": text, "fields": {...}}."""
    if isinstance(exc, PermissionDenied):  # refusals are audited (after any rollback)
        request = context.get("request")
        if request is not None:
            audit_record_request(
                request=request,
                action=_action_of(context),
                outcome="denied",
                detail=exc.detail,
                object_type=str(getattr(context.get("view"), "basename", "") or ""),
                object_id=str((context.get("kwargs") or {}).get("pk", "")),
            )
    if isinstance(exc, DomusError):
        body: dict[str, Any] = {"error": exc.code, "detail": exc.detail}
        if exc.fields:
            body["fields"] = exc.fields
        return Response(body, status=exc.status)
    return drf_exception_handler(exc, context)
