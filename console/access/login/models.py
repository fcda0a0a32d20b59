"""The second factor's device: django-otp's TOTP device, with its seed encrypted at rest.

django-otp's own TOTPDevice keeps the seed in plain hex (and its column is too narrow for a
ciphertext), so sign-in uses this model instead; its behaviour (verification with drift and
replay protection, throttling, the otpauth URI) is django-otp's, taken from TOTPDevice itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from django.db import models
from django_otp.models import Device, ThrottlingMixin, TimestampMixin
from django_otp.plugins.otp_totp.models import TOTPDevice, default_key

from console.encryption.fields import EncryptedTextField


class AuthenticatorApp(TimestampMixin, ThrottlingMixin, Device):  # type: ignore[misc]
    """A user's authenticator app (TOTP, RFC 6238). Fields as django-otp's TOTPDevice."""

    key = EncryptedTextField(default=default_key, help_text="The hex-encoded seed (encrypted at rest).")
    step = models.PositiveSmallIntegerField(default=30)
    t0 = models.BigIntegerField(default=0)
    digits = models.PositiveSmallIntegerField(choices=[(6, 6), (8, 8)], default=6)
    tolerance = models.PositiveSmallIntegerField(default=1)
    drift = models.SmallIntegerField(default=0)
    last_t = models.BigIntegerField(default=-1)

    if TYPE_CHECKING:  # django-otp is untyped: say what its manager returns
        objects: ClassVar[models.Manager[AuthenticatorApp]]

    class Meta(Device.Meta):  # type: ignore[misc]
        verbose_name = "authenticator app"

    bin_key = TOTPDevice.bin_key
    verify_token = TOTPDevice.verify_token
    get_throttle_factor = TOTPDevice.get_throttle_factor
    config_url = TOTPDevice.config_url
    _read_str_from_settings = TOTPDevice._read_str_from_settings
