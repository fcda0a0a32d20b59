"""Typed errors raised by services; the edges (API, pages, jobs) turn them into clear messages."""

from __future__ import annotations


class DomusError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, detail: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields or {}

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the JSON body."""
        return {}


class InvalidInput(DomusError):
    status = 400
    code = "invalid"


class NotFound(DomusError):
    status = 404
    code = "not_found"


class Conflict(DomusError):
    status = 409
    code = "conflict"


class PermissionDenied(DomusError):
    status = 403
    code = "forbidden"


class TooBusy(DomusError):
    """Too much is already waiting: the caller should try again after `retry_after` seconds."""

    status = 429
    code = "too_busy"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
