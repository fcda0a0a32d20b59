from typing import Any

from django.core.management.base import BaseCommand, CommandError

from console.audit.verify import audit_verify


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; exits 1 naming the first bad event."

    def handle(self, *args: Any, **options: Any) -> None:
        result = audit_verify()
        if not result.ok:
            raise CommandError(
                f"audit chain BROKEN at seq {result.first_bad_seq}: {result.problem} "
                f"({result.checked} events verified before it)"
            )
        self.stdout.write(f"audit chain OK: {result.checked} events")
