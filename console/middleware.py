from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.core.exceptions import DisallowedHost
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


# --- Content-Security-Policy (issue 18) ---------------------------------------------------------
# A page runs and loads only this console's own files: no inline script anywhere (a page's data
# travels in json_script blocks, its behaviour in static/domus/*.js), no third-party origin, no
# plugin, no framing. Set on every response, static files too: a vendor package's HTML page
# (noVNC's vnc.html, swagger-ui's index.html) served from here is held to the same rules.
_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    # data: URLs: swagger-ui's CSS icons, the 2FA QR code, noVNC's cursor and its decoded images.
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
_HEADER = "Content-Security-Policy"


def content_security_policy(request: HttpRequest, *, inline_styles: bool = False) -> str:
    directives = dict(_POLICY)
    try:
        # CSP3 lets 'self' match ws(s) on the page's own host; Safari before 16 did not. Only
        # the scheme the page itself uses: an https page never opens a plaintext socket.
        host = request.get_host()
    except DisallowedHost:
        host = ""
    if host:
        directives["connect-src"] += f" {'wss' if request.is_secure() else 'ws'}://{host}"
    if inline_styles:
        directives["style-src"] += " 'unsafe-inline'"
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def csp_inline_styles(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """For a page whose library writes <style> elements and style attributes (xterm.js does, and
    has no nonce to give them): styles may be inline there; scripts still may not."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response[_HEADER] = content_security_policy(request, inline_styles=True)
        return response

    return wrapped


class ContentSecurityPolicyMiddleware:
    """Gives every response the console's policy, unless its view set one (csp_inline_styles)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if _HEADER not in response:
            response[_HEADER] = content_security_policy(request)
        return response
