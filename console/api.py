from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from console.audit.services import audit_record_request
from console.errors import DomusError, InvalidInput, PermissionDenied
from console.params import MAX_ID, number_param

# DRF's codes where console.errors has its own name for the same answer.
_CODES = {"permission_denied": "forbidden"}


def _action_of(context: dict[str, Any]) -> str:
    view = context.get("view")
    basename = getattr(view, "basename", None) or "api"
    return f"{basename}.{getattr(view, 'action', None) or 'request'}"


def _flat_fields(errors: Any, prefix: str = "") -> dict[str, list[str]]:
    """A serializer's nested errors as {"disks.0.size_gib": [messages]} (console.errors' shape)."""
    if isinstance(errors, dict):
        fields: dict[str, list[str]] = {}
        for key, value in errors.items():
            fields.update(_flat_fields(value, f"{prefix}.{key}" if prefix else str(key)))
        return fields
    if isinstance(errors, list) and any(isinstance(e, dict | list) for e in errors):
        fields = {}
        for index, value in enumerate(errors):
            fields.update(_flat_fields(value, f"{prefix}.{index}" if prefix else str(index)))
        return fields
    messages = [str(e) for e in errors] if isinstance(errors, list) else [str(errors)]
    return {prefix or "non_field_errors": messages} if messages else {}


def _problem(exc: exceptions.APIException, response: Response) -> Response:
    """DRF's own refusals (a serializer's validation, authentication, an unknown id, a bad JSON
    body) in the same shape as the services' errors, with DRF's status and headers."""
    if isinstance(exc, exceptions.ValidationError):
        fields = _flat_fields(exc.detail)
        whole = fields.get("non_field_errors") if len(fields) == 1 else None  # about the body as a whole
        detail = " ".join(whole) if whole else f"Invalid {', '.join(fields) or 'input'}."
        body: dict[str, Any] = {"error": "invalid", "detail": detail, "fields": fields}
    else:
        code = exc.get_codes()
        code = code if isinstance(code, str) else exc.default_code
        body = {"error": _CODES.get(code, code), "detail": str(exc.detail)}
    response.data = body
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Errors become problem JSON: {"error": code, "detail": text, "fields": {...}}: the services'
    typed errors (console.errors) and DRF's own refusals alike."""
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
        return Response(body, status=exc.status, headers=exc.headers or None)
    # DRF answers Http404 and Django's PermissionDenied as its own NotFound and PermissionDenied.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        return _problem(exc, response)
    return response


class ApiPagination(LimitOffsetPagination):
    """Every list's ?limit= (1 to 500, default 100; more is served as 500) and ?offset= (from 0).
    Anything else is a 400 naming the parameter, rather than silently the first page, or a
    database error for a number no column holds (DRF's own pagination passes any limit on)."""

    default_limit = 100
    max_limit = 500

    def _number(self, request: Request, name: str, *, least: int, most: int, clamp: bool) -> int | None:
        errors: dict[str, list[str]] = {}
        number = number_param(request.query_params, name, errors, least=least, most=most, clamp=clamp)
        if errors:
            raise InvalidInput(f"Invalid {name}.", fields=errors)
        return number

    def get_limit(self, request: Request) -> int:
        limit = self._number(request, self.limit_query_param, least=1, most=self.max_limit, clamp=True)
        return self.default_limit if limit is None else limit

    def get_offset(self, request: Request) -> int:
        return self._number(request, self.offset_query_param, least=0, most=MAX_ID, clamp=False) or 0
