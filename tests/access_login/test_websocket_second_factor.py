from __future__ import annotations

from typing import Any

import pytest
from django_otp import DEVICE_ID_SESSION_KEY

from console.access.login.models import AuthenticatorApp
from console.access.websocket import _second_factor_missing

pytestmark = pytest.mark.django_db


def test_a_session_without_the_code_is_anonymous_on_websockets(user: Any) -> None:
    assert not _second_factor_missing({"user": user, "session": {}})  # no device: the password suffices
    device = AuthenticatorApp.objects.create(user=user, name="phone", confirmed=True)
    assert _second_factor_missing({"user": user, "session": {}})
    assert not _second_factor_missing(
        {"user": user, "session": {DEVICE_ID_SESSION_KEY: device.persistent_id}}
    )
