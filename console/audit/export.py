"""CSV and JSON renderings of audit events, produced row by row for streaming responses."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet

from console.audit.chain import HASHED_FIELDS, format_timestamp
from console.audit.models import AuditEvent

EXPORT_CHUNK = 2000
# Every hashed field (the actor by name) and the hash: an export alone re-verifies the chain.
COLUMNS = (*("actor" if field == "actor_name" else field for field in HASHED_FIELDS), "hash")
# Cells a spreadsheet would run as a formula (CSV injection); prefixed with a quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def audit_event_row(event: AuditEvent) -> dict[str, Any]:
    """One event as plain values; seq, prev_hash and hash let a reader re-verify the chain."""
    return {
        "seq": event.seq,
        "created_at": format_timestamp(event.created_at),
        "actor": event.actor_name,
        "token_prefix": event.token_prefix,
        "ip": event.ip,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "changes": event.changes,
        "outcome": event.outcome,
        "detail": event.detail,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def audit_csv_lines(events: QuerySet[AuditEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: list[str]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    yield line(list(COLUMNS))
    for event in events.iterator(chunk_size=EXPORT_CHUNK):
        row = audit_event_row(event)
        yield line([_csv_cell(row[c]) for c in COLUMNS])


def audit_json_chunks(events: QuerySet[AuditEvent]) -> Iterator[str]:
    """A JSON array, one event per line."""
    yield "["
    separator = "\n"
    for event in events.iterator(chunk_size=EXPORT_CHUNK):
        yield separator + json.dumps(audit_event_row(event), ensure_ascii=False, sort_keys=True)
        separator = ",\n"
    yield "\n]\n"
