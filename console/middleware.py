from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from console.errors import DomusError


class DomusErrorMiddleware:
    """Pages: a service error that escaped a view becomes a page saying what went wrong."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DomusError):
            return None
        response = TemplateResponse(
            request,
            "error.html",
            {"detail": exception.detail, "status": exception.status},
            status=exception.status,
        )
        return response.render()
