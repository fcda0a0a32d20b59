from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.audit.services import audit_prune
from console.errors import DomusError


class Command(BaseCommand):
    help = "Delete audit events older than the retention, keeping the rest of the chain verifiable."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="retention in days (default: DOMUS_AUDIT_RETENTION_DAYS, 365)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"]
        if days is None:
            days = int(getattr(settings, "DOMUS_AUDIT_RETENTION_DAYS", 365))
        try:
            pruned = audit_prune(older_than_days=days)
        except DomusError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"pruned {pruned} audit events older than {days} days")
