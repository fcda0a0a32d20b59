from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from console.access.policy import restrict
from console.audit.filters import AuditFilter
from console.audit.models import AuditEvent


def audit_event_list(*, user: Any, filters: AuditFilter | None = None) -> QuerySet[AuditEvent]:
    """The events `user` may read, matching `filters`, newest first."""
    queryset = restrict(AuditEvent.objects.all(), user, "audit.view")
    f = filters or AuditFilter()
    if f.actor:
        queryset = queryset.filter(actor_name=f.actor)
    if f.action:
        queryset = queryset.filter(action=f.action)
    if f.action_prefix:
        queryset = queryset.filter(action__startswith=f.action_prefix)
    if f.object_type:
        queryset = queryset.filter(object_type=f.object_type)
    if f.object_id:
        queryset = queryset.filter(object_id=f.object_id)
    if f.outcome:
        queryset = queryset.filter(outcome=f.outcome)
    if f.since is not None:
        queryset = queryset.filter(created_at__gte=f.since)
    if f.until is not None:
        queryset = queryset.filter(created_at__lt=f.until)
    return queryset.order_by("-seq")
