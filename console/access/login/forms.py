from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from console.access.login.throttle import Lockout, login_failure_record, login_refusal
from console.audit.services import audit_record, request_ip


def failure_record(*, username: str, ip: str | None, reason: str) -> Lockout | None:
    """Count a failed attempt (throttle.py) and record in the audit trail each lockout it
    started; the lockout to show, if one started."""
    started = login_failure_record(username=username, ip=ip)
    for lockout in started:
        until = lockout.until.isoformat(timespec="seconds")
        audit_record(
            action="auth.lockout",
            ip=ip,
            object_type="user" if lockout.scope == "user" else "address",
            object_repr=(username if lockout.scope == "user" else ip or "")[:150],
            outcome="denied",
            detail=f"{reason}; {lockout.scope} locked until {until}",
        )
    return started[0] if started else None


class ThrottledAuthenticationForm(AuthenticationForm):
    """Django's sign-in form behind the failed-attempt lockout (throttle.py).

    A locked username or address is refused before the password is checked, with the same
    message whether or not the account exists."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "Wrong username or password.",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lockout: Lockout | None = None

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if not username or not password:
            return super().clean()  # field errors ("This field is required.")
        ip = request_ip(self.request) if self.request is not None else None
        if (refusal := login_refusal(username=username, ip=ip)) is not None:
            self.lockout = refusal
            raise ValidationError(refusal.message(), code="locked")
        try:
            return super().clean()
        except ValidationError:
            started = failure_record(username=username, ip=ip, reason="wrong password")
            if started is not None:
                self.lockout = started
                raise ValidationError(started.message(), code="locked") from None
            raise


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=16,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )
