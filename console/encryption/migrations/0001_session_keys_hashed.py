"""Sessions created before console.encryption.sessions were keyed by the cookie's value itself:
key them by its hash, so the database gives no usable cookie and their users stay signed in."""

from typing import Any

from django.db import migrations

from console.encryption.sessions import HASHED_KEY_LENGTH, stored_key


def hash_session_keys(apps: Any, schema_editor: Any) -> None:
    session = apps.get_model("sessions", "Session")
    for key in session.objects.values_list("session_key", flat=True):
        if len(key) != HASHED_KEY_LENGTH:  # hashed ones are left as they are: re-running is harmless
            session.objects.filter(session_key=key).update(session_key=stored_key(key))


class Migration(migrations.Migration):
    dependencies = [("sessions", "0001_initial")]

    operations = [migrations.RunPython(hash_session_keys, migrations.RunPython.noop)]
