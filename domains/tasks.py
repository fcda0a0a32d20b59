"""Domains' periodic upkeep (run by the scheduler, console/jobs/periodic.py)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from console.jobs.periodic import periodic
from domains.models import ConsoleTicket

# A ticket is spent or void a minute after it is made (DOMUS_CONSOLE_TICKET_TTL_SECONDS); an open
# console keeps its ticket in memory. An hour's margin leaves the recent ones for a look.
TICKETS_KEPT = timedelta(hours=1)


@periodic("consoles: delete expired tickets", every=3600.0)
def console_tickets_purge() -> str:
    deleted, _ = ConsoleTicket.objects.filter(expires_at__lt=timezone.now() - TICKETS_KEPT).delete()
    return f"deleted {deleted} expired console tickets" if deleted else ""
