from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode

from console.access.login.totp import session_verified, totp_enrolled


class SecondFactorMiddleware:
    """A signed-in session whose user has a confirmed TOTP device but has not given a code in
    this session (an OpenID Connect sign-in, or a session that predates the enrolment) reaches
    only the code step and sign-out: pages redirect to the code step, and the API treats the
    session as anonymous (API tokens, checked by DRF, are unaffected).

    Installed after django_otp's OTPMiddleware, which provides `user.is_verified()`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if (
            user.is_authenticated
            and not session_verified(user)
            and not self._exempt(request.path_info)
            and totp_enrolled(user)
        ):
            if request.path_info.startswith("/api/"):
                request.user = AnonymousUser()
            else:
                query = urlencode({"next": request.get_full_path()})
                return redirect(f"{reverse('login-code')}?{query}")
        return self.get_response(request)

    @staticmethod
    def _exempt(path: str) -> bool:
        exempt = (
            reverse("login-code"),
            reverse("logout"),
            reverse("healthz"),
            reverse("livez"),
            settings.STATIC_URL,
        )
        return any(path.startswith(prefix) for prefix in exempt if prefix)
