"""Host secrets encrypted at rest (console.encryption): the column becomes text (a ciphertext is
longer than the secret) and every plain value is encrypted (running it again is harmless)."""

from typing import Any

from django.db import migrations

import console.encryption.fields
from console.encryption.services import model_decrypt_in_place, model_reencrypt


def encrypt_secrets(apps: Any, schema_editor: Any) -> None:
    model_reencrypt(apps.get_model("hosts", "Host"), ["secret"])


def decrypt_secrets(apps: Any, schema_editor: Any) -> None:
    model_decrypt_in_place(apps.get_model("hosts", "Host"), ["secret"])


class Migration(migrations.Migration):
    dependencies = [("hosts", "0003_enrolment_maintenance_stats")]

    operations = [
        migrations.AlterField(
            model_name="host",
            name="secret",
            field=console.encryption.fields.EncryptedTextField(),
        ),
        migrations.RunPython(encrypt_secrets, decrypt_secrets),
    ]
