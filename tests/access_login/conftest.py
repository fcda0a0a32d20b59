from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django_otp.oath import TOTP

from console.access.login.models import AuthenticatorApp

PASSWORD = "s3cret-pass"


def sign_in(client: Client, username: str = "ana", password: str = PASSWORD, **extra: Any) -> Any:
    return client.post("/login/", {"username": username, "password": password}, **extra)


def current_code(device: AuthenticatorApp) -> str:
    """The code the user's app shows now. TOTP refuses a code twice (and any earlier one), so
    the device forgets which it saw last, as if the next time step had come."""
    AuthenticatorApp.objects.filter(pk=device.pk).update(last_t=-1)
    device.refresh_from_db()
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"


def wrong_code(device: AuthenticatorApp) -> str:
    right = int(current_code(device))
    return f"{(right + 500000) % 1000000:06d}"


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def device(user: Any) -> AuthenticatorApp:
    """A confirmed TOTP device for ana."""
    return AuthenticatorApp.objects.create(user=user, name="phone", confirmed=True)
