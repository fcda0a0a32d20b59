"""The audit trail's filters, parsed from query parameters (shared by the API, exports and page)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, time

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from console.audit.models import AuditEvent
from console.errors import InvalidInput

TEXT_PARAMS = {
    "actor": "actor",
    "action": "action",
    "action__startswith": "action_prefix",
    "object_type": "object_type",
    "object_id": "object_id",
    "outcome": "outcome",
}
DATE_PARAMS = ("since", "until")


@dataclass(frozen=True)
class AuditFilter:
    actor: str = ""  # username (as recorded, so deleted users can still be found)
    action: str = ""
    action_prefix: str = ""
    object_type: str = ""
    object_id: str = ""
    outcome: str = ""
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def as_params(self) -> dict[str, str]:
        """Query parameters that reproduce this filter (for export links and pagination)."""
        names = {attr: param for param, attr in TEXT_PARAMS.items()}
        params: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                params[f.name] = value.isoformat()
            elif value:
                params[names[f.name]] = value
        return params


def _parse_moment(raw: str) -> datetime | None:
    """The moment `raw` names, in UTC (None: not one). In UTC because a database need not take
    every offset ISO 8601 allows: PostgreSQL refuses +23:16, which Python parses."""
    try:
        moment = parse_datetime(raw)
        if moment is None and (day := parse_date(raw)) is not None:
            moment = datetime.combine(day, time.min)
        if moment is None:
            return None
        if timezone.is_naive(moment):
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):  # a date beyond year 9999 once in UTC
        return None


def audit_filter_parse(params: Mapping[str, str]) -> AuditFilter:
    """Build a filter from query parameters: actor, action, action__startswith, object_type,
    object_id, outcome, since, until (ISO 8601 date or datetime; naive means UTC)."""
    errors: dict[str, list[str]] = {}
    values: dict[str, str | datetime | None] = {}
    for param, attr in TEXT_PARAMS.items():
        values[attr] = (params.get(param) or "").strip()
    if values["outcome"] and values["outcome"] not in AuditEvent.Outcome.values:
        errors["outcome"] = [f"expected one of {', '.join(AuditEvent.Outcome.values)}"]
    for param in DATE_PARAMS:
        raw = (params.get(param) or "").strip()
        values[param] = _parse_moment(raw) if raw else None
        if raw and values[param] is None:
            errors[param] = ["expected an ISO 8601 date or datetime, e.g. 2025-01-31T12:00:00Z"]
    if errors:
        raise InvalidInput("Invalid audit filter.", fields=errors)
    return AuditFilter(**values)  # type: ignore[arg-type]
