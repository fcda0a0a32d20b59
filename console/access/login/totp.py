"""TOTP second factor (AuthenticatorApp: django-otp's TOTP device, its seed encrypted at rest):
enrolment, verification, removal.

Only a confirmed device counts: enrolment creates an unconfirmed one, shown to the user as an
otpauth URI and QR code, and confirms it when the user types one code it produces.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import qrcode
import qrcode.image.svg
from django.db import transaction

from console.access.login.models import AuthenticatorApp
from console.audit.services import audit_record
from console.errors import InvalidInput

DEVICE_NAME = "Authenticator app"


def _clean(code: str) -> str:
    return "".join(code.split())


def totp_device_confirmed(user: Any) -> AuthenticatorApp | None:
    return AuthenticatorApp.objects.filter(user=user, confirmed=True).order_by("pk").first()


def totp_enrolled(user: Any) -> bool:
    return bool(AuthenticatorApp.objects.filter(user=user, confirmed=True).exists())


def session_verified(user: Any) -> bool:
    """Whether this request's session has given a code (set by django_otp's OTPMiddleware)."""
    is_verified = getattr(user, "is_verified", None)
    return bool(is_verified()) if callable(is_verified) else False


def totp_verify(*, user: Any, code: str) -> AuthenticatorApp | None:
    """The confirmed device that accepts `code` (each code works once), or None."""
    code = _clean(code)
    if not code.isdigit():
        return None
    for device in AuthenticatorApp.objects.filter(user=user, confirmed=True).order_by("pk"):
        if device.verify_token(code):
            return device
    return None


def totp_enrolment_pending(*, user: Any) -> AuthenticatorApp:
    """The user's unconfirmed device, created on first call (its secret stays the same until it
    is confirmed, so reloading the page does not invalidate a scanned code)."""
    device = AuthenticatorApp.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        device = AuthenticatorApp.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
    return device


@transaction.atomic
def totp_enrol_confirm(*, user: Any, code: str, ip: str | None) -> AuthenticatorApp:
    if totp_enrolled(user):
        raise InvalidInput("Two-factor sign-in is already on.")
    device = AuthenticatorApp.objects.select_for_update().filter(user=user, confirmed=False).first()
    if device is None:
        raise InvalidInput("Start the enrolment again: there is no pending authenticator.")
    if not _clean(code).isdigit() or not device.verify_token(_clean(code)):
        raise InvalidInput("That code is not right; check the app's clock and try the current code.")
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    AuthenticatorApp.objects.filter(user=user, confirmed=False).delete()
    audit_record(action="auth.totp.enrol", actor=user, ip=ip, obj=user)
    return device


@transaction.atomic
def totp_remove(*, user: Any, code: str, ip: str | None) -> None:
    """Turn two-factor sign-in off, on proof of a current code."""
    if totp_verify(user=user, code=code) is None:
        raise InvalidInput("That code is not right.")
    AuthenticatorApp.objects.filter(user=user).delete()
    audit_record(action="auth.totp.remove", actor=user, ip=ip, obj=user)


def totp_qr_data_uri(device: AuthenticatorApp) -> str:
    """The device's otpauth URI as an SVG QR code, in a data: URI for an <img>."""
    image = qrcode.make(device.config_url, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    buffer = io.BytesIO()
    image.save(buffer)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()
