"""The hash chain: each event's hash covers a canonical JSON of its fields and the previous hash.

Pure functions, no database: the service computes hashes with them when appending and the
verifier recomputes them from what the database returns, so both must see identical values.
That is why values are normalised *before* they are stored (see `normalise_changes`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

# Bumped if the canonical form ever changes; part of every hashed payload.
CHAIN_VERSION = 1

# Every AuditEvent field the hash covers. Left out: `id` (a storage detail; `seq` is the event's
# identity), `actor` (a convenience link that SET_NULL clears when the user is deleted;
# `actor_name` is the hashed snapshot) and `hash` itself.
HASHED_FIELDS = (
    "seq",
    "created_at",
    "actor_name",
    "token_prefix",
    "ip",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "changes",
    "outcome",
    "detail",
    "prev_hash",
)


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds, always the same width."""
    if value.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _normalise(value: Any) -> Any:
    # Integral floats become ints: PostgreSQL's jsonb gives 1e20 back as an integer, so the hash
    # must not depend on which form a number came back in.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def normalise_changes(changes: Any) -> Any:
    """Plain JSON values (dates, UUIDs and decimals as Django's encoder writes them), stable
    across a round trip through either database. Raises ValueError for NaN and infinities."""
    return _normalise(json.loads(json.dumps(changes, cls=DjangoJSONEncoder, allow_nan=False)))


def canonical_json(fields: dict[str, Any]) -> str:
    payload = {name: fields[name] for name in HASHED_FIELDS}
    payload["created_at"] = format_timestamp(payload["created_at"])
    payload["changes"] = _normalise(payload["changes"])
    payload["v"] = CHAIN_VERSION
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_hash(fields: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of `fields` (a mapping with every HASHED_FIELDS key)."""
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()
