"""The audit trail's periodic upkeep (run by the scheduler, console/jobs/periodic.py)."""

from __future__ import annotations

from django.conf import settings

from console.audit.services import audit_prune
from console.jobs.periodic import periodic

DAY = 24 * 3600.0


@periodic("audit: apply the retention", every=DAY)
def audit_retention() -> str:
    pruned = audit_prune(older_than_days=settings.DOMUS_AUDIT_RETENTION_DAYS)
    return f"pruned {pruned} events older than {settings.DOMUS_AUDIT_RETENTION_DAYS} days" if pruned else ""
