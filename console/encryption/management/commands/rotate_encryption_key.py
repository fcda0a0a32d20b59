"""`manage.py rotate_encryption_key`: encrypt every stored secret again with the first key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.encryption.keys import configured_keys
from console.encryption.services import encrypted_fields, model_reencrypt, stale_values


class Command(BaseCommand):
    help = (
        "Encrypt every stored secret (host secrets, TOTP seeds) again with the first configured key, "
        "after which the other keys can be removed. --check only counts what still needs them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="change nothing; fail if a value is not yet encrypted with the first key",
        )

    def handle(self, *args: Any, check: bool = False, **options: Any) -> None:
        keys = configured_keys()
        if check:
            stale = {m._meta.label: stale_values(m, fields) for m, fields in encrypted_fields()}
            if total := sum(stale.values()):
                detail = ", ".join(f"{label}: {count}" for label, count in stale.items() if count)
                raise CommandError(
                    f"{total} value(s) still need an older key ({detail}): run rotate_encryption_key"
                )
            self.stdout.write("Every stored secret is encrypted with the first key.")
            return
        for model, fields in encrypted_fields():
            written = model_reencrypt(model, fields)
            self.stdout.write(
                f"{model._meta.label} ({', '.join(fields)}): {written} value(s) encrypted again"
            )
        others = len(keys) - 1
        if others:
            self.stdout.write(
                f"Done: the other {others} key(s) are no longer needed. Remove them from "
                "DOMUS_ENCRYPTION_KEYS or the key file, then restart the console's processes."
            )
        else:
            self.stdout.write("Done: everything is encrypted with the only key.")
