"""TOTP devices move from django-otp's table, where the seed is plain hex, to AuthenticatorApp,
where it is encrypted at rest; django-otp's table is left empty. A session verified with a moved
device is asked for a code once more."""

from typing import Any

import django.db.models.deletion
import django_otp.plugins.otp_totp.models
from django.conf import settings
from django.db import migrations, models

import console.encryption.fields

FIELDS = (
    *("user_id", "name", "confirmed", "key", "step", "t0", "digits", "tolerance", "drift", "last_t"),
    *("throttling_failure_timestamp", "throttling_failure_count", "created_at", "last_used_at"),
)


def _move(source: Any, target: Any) -> None:
    for device in source.objects.order_by("pk"):
        moved = target.objects.create(**{name: getattr(device, name) for name in FIELDS})
        target.objects.filter(pk=moved.pk).update(created_at=device.created_at)  # not auto_now_add's
    source.objects.all().delete()


def move_devices(apps: Any, schema_editor: Any) -> None:
    _move(apps.get_model("otp_totp", "TOTPDevice"), apps.get_model("access_login", "AuthenticatorApp"))


def move_devices_back(apps: Any, schema_editor: Any) -> None:
    _move(apps.get_model("access_login", "AuthenticatorApp"), apps.get_model("otp_totp", "TOTPDevice"))


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("otp_totp", "0003_add_timestamps"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="AuthenticatorApp",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "name",
                    models.CharField(help_text="The human-readable name of this device.", max_length=64),
                ),
                (
                    "confirmed",
                    models.BooleanField(default=True, help_text="Is this device ready for use?"),
                ),
                (
                    "throttling_failure_timestamp",
                    models.DateTimeField(
                        blank=True,
                        default=None,
                        help_text=(
                            "A timestamp of the last failed verification attempt. Null if last attempt succeeded."
                        ),
                        null=True,
                    ),
                ),
                (
                    "throttling_failure_count",
                    models.PositiveIntegerField(default=0, help_text="Number of successive failed attempts."),
                ),
                (
                    "created_at",
                    models.DateTimeField(
                        auto_now_add=True,
                        help_text="The date and time when this device was initially created in the system.",
                        null=True,
                    ),
                ),
                (
                    "last_used_at",
                    models.DateTimeField(
                        blank=True,
                        help_text="The most recent date and time this device was used.",
                        null=True,
                    ),
                ),
                (
                    "key",
                    console.encryption.fields.EncryptedTextField(
                        default=django_otp.plugins.otp_totp.models.default_key,
                        help_text="The hex-encoded seed (encrypted at rest).",
                    ),
                ),
                ("step", models.PositiveSmallIntegerField(default=30)),
                ("t0", models.BigIntegerField(default=0)),
                ("digits", models.PositiveSmallIntegerField(choices=[(6, 6), (8, 8)], default=6)),
                ("tolerance", models.PositiveSmallIntegerField(default=1)),
                ("drift", models.SmallIntegerField(default=0)),
                ("last_t", models.BigIntegerField(default=-1)),
                (
                    "user",
                    models.ForeignKey(
                        help_text="The user that this device belongs to.",
                        on_delete=django.db.models.deletion.CASCADE,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "verbose_name": "authenticator app",
                "abstract": False,
            },
        ),
        migrations.RunPython(move_devices, move_devices_back),
    ]
