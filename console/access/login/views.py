"""Sign-in pages: the password step, the code step, and the two-factor settings page.

A user with a confirmed TOTP device is not signed in by the password: the password step keeps
only a pending sign-in in the session (user id, backend, where to go, an expiry of
DOMUS_LOGIN_PENDING_SECONDS), and the code step calls `auth.login` once the code is right.
"""

from __future__ import annotations

import time
from typing import Any

import django_otp
from django.conf import settings
from django.contrib import auth, messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render, resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters

from console.access.login.forms import CodeForm, ThrottledAuthenticationForm, failure_record
from console.access.login.throttle import login_refusal, login_success_record
from console.access.login.totp import (
    session_verified,
    totp_enrol_confirm,
    totp_enrolled,
    totp_enrolment_pending,
    totp_qr_data_uri,
    totp_remove,
    totp_verify,
)
from console.audit.services import audit_record, request_ip
from console.errors import InvalidInput

PENDING_KEY = "domus_login_pending"


def _pending_seconds() -> int:
    return int(getattr(settings, "DOMUS_LOGIN_PENDING_SECONDS", 300))


def _oidc_enabled() -> bool:
    return bool(getattr(settings, "DOMUS_OIDC_ENABLED", False))


class DomusLoginView(LoginView):
    form_class = ThrottledAuthenticationForm
    template_name = "access/login.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["oidc_enabled"] = _oidc_enabled()
        return context

    def form_valid(self, form: Any) -> HttpResponse:
        user = form.get_user()
        username = form.cleaned_data["username"]
        if totp_enrolled(user):
            # A fresh session id: a fixed one must not inherit the half-done sign-in.
            self.request.session.cycle_key()
            self.request.session[PENDING_KEY] = {
                "user_id": user.pk,
                "backend": user.backend,
                "username": username,
                "next": self.get_success_url(),
                "expires": time.time() + _pending_seconds(),
            }
            return redirect("login-code")
        login_success_record(username=username)
        return super().form_valid(form)

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if getattr(form, "lockout", None) is not None:
            response.status_code = 429
        return response


def _pending(request: HttpRequest) -> dict[str, Any] | None:
    pending = request.session.get(PENDING_KEY)
    if not isinstance(pending, dict) or float(pending.get("expires", 0)) < time.time():
        request.session.pop(PENDING_KEY, None)
        return None
    return pending


def _safe_next(request: HttpRequest, url: str | None) -> str:
    if url and url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return url
    return resolve_url(settings.LOGIN_REDIRECT_URL)


def _code_page(request: HttpRequest, form: CodeForm, *, status: int = 200, **extra: Any) -> HttpResponse:
    return render(request, "access/login_code.html", {"form": form, **extra}, status=status)


def _abandon(request: HttpRequest) -> None:
    """Drop a half-done sign-in: the pending one, or an unverified session."""
    request.session.pop(PENDING_KEY, None)
    if request.user.is_authenticated:
        auth.logout(request)


@sensitive_post_parameters("code")
@csrf_protect
@never_cache
def login_code(request: HttpRequest) -> HttpResponseBase:
    """The second step: a code from the user's authenticator app.

    Reached after the password step (a pending sign-in), or by a signed-in session that has not
    given the code yet (an OpenID Connect sign-in, or a session older than the enrolment)."""
    pending = _pending(request)
    user: Any
    if pending is not None:
        user_model = auth.get_user_model()
        user = user_model._default_manager.filter(pk=pending["user_id"], is_active=True).first()
        username = str(pending["username"])
        next_url = str(pending["next"])
    elif request.user.is_authenticated and totp_enrolled(request.user):
        if session_verified(request.user):
            return redirect(_safe_next(request, request.GET.get("next")))
        user = request.user
        username = user.get_username()
        next_url = _safe_next(request, request.POST.get("next") or request.GET.get("next"))
    else:
        messages.info(request, "Sign in again: the sign-in expired.")
        return redirect("login")
    if user is None:
        request.session.pop(PENDING_KEY, None)
        return redirect("login")

    if request.method != "POST":
        return _code_page(request, CodeForm(), next=next_url)
    form = CodeForm(request.POST)
    if not form.is_valid():
        return _code_page(request, form, next=next_url)
    ip = request_ip(request)
    if (refusal := login_refusal(username=username, ip=ip)) is not None:
        _abandon(request)
        return _code_page(request, CodeForm(), status=429, locked=refusal.message())
    device = totp_verify(user=user, code=form.cleaned_data["code"])
    if device is None:
        audit_record(
            action="auth.login_failed",
            ip=ip,
            object_type="user",
            object_repr=username[:150],
            outcome="failed",
            detail="wrong second-factor code",
        )
        started = failure_record(username=username, ip=ip, reason="wrong second-factor code")
        if started is not None:
            _abandon(request)
            return _code_page(request, CodeForm(), status=429, locked=started.message())
        form.add_error("code", "That code is not right.")
        return _code_page(request, form, next=next_url)

    if pending is not None:
        request.session.pop(PENDING_KEY, None)
        auth.login(request, user, backend=str(pending["backend"]))
    django_otp.login(request, device)
    login_success_record(username=username)
    return redirect(next_url)


@login_required
@sensitive_post_parameters("code")
@never_cache
def account_2fa(request: HttpRequest) -> HttpResponse:
    """Turn the TOTP second factor on (scan, then confirm with one code) or off (with a code)."""
    user = request.user
    ip = request_ip(request)
    form = CodeForm(request.POST or None)
    enrolled = totp_enrolled(user)
    status = 200
    if request.method == "POST" and form.is_valid():
        code = form.cleaned_data["code"]
        try:
            if request.POST.get("action") == "remove" and enrolled:
                username = user.get_username()
                if (refusal := login_refusal(username=username, ip=ip)) is not None:
                    raise InvalidInput(refusal.message())
                try:
                    totp_remove(user=user, code=code, ip=ip)
                except InvalidInput:
                    failure_record(username=username, ip=ip, reason="wrong code to turn 2FA off")
                    raise
                messages.success(request, "Two-factor sign-in is off.")
            elif not enrolled:
                device = totp_enrol_confirm(user=user, code=code, ip=ip)
                django_otp.login(request, device)  # this session has just proved the code
                messages.success(request, "Two-factor sign-in is on.")
            return redirect("account-2fa")
        except InvalidInput as exc:
            form.add_error("code", exc.detail)
            status = 400
    context: dict[str, Any] = {"form": form, "enrolled": enrolled}
    if not enrolled:
        device = totp_enrolment_pending(user=user)
        context.update(otpauth_uri=device.config_url, qr_code=totp_qr_data_uri(device))
    return render(request, "access/account_2fa.html", context, status=status)
