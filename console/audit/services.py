"""Writes to the audit trail.

Transactions: `audit_record` runs inside the caller's transaction when there is one (its own
`atomic` is then a savepoint), so an action that rolls back leaves no audit row, and the row
commits together with the change it describes. Call it late in the service, just before
returning: from the call until the caller commits, the transaction holds the lock on the
chain's head row, which serialises every other audited write.

A denial or a failure that rolls the action back must be recorded *after* the rolled-back
block has exited (e.g. in the view's `except`, or by the service outside its inner atomic),
otherwise the audit row is rolled back with it.

Concurrency: appends are serialised by locking the single `AuditHead` row with
`select_for_update` (a row lock on PostgreSQL). On SQLite, where select_for_update is a no-op,
the settings' `transaction_mode="IMMEDIATE"` takes the database's write lock at BEGIN, which
serialises appends across processes just the same.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Model
from django.http import HttpRequest
from django.utils import timezone
from rest_framework.exceptions import APIException
from rest_framework.request import Request

from console.access.models import ApiToken
from console.audit.chain import normalise_changes
from console.audit.models import AuditEvent, AuditHead
from console.audit.verify import check_segment
from console.errors import Conflict, InvalidInput

OUTCOMES = frozenset(AuditEvent.Outcome.values)
PRUNE_BATCH = 5000


@dataclass(frozen=True)
class Origin:
    """Where an action came from, as the edge saw it: the API token used and the address.
    Views hand it to services, which record it with what they did."""

    token: ApiToken | None = None
    ip: str | None = None


def origin_of(request: HttpRequest | Request) -> Origin:
    auth = getattr(request, "auth", None) if isinstance(request, Request) else None
    return Origin(token=auth if isinstance(auth, ApiToken) else None, ip=request_ip(request))


def _head_locked() -> AuditHead:
    """The chain head, locked until the surrounding transaction ends (created on first use)."""
    head = AuditHead.objects.select_for_update().filter(pk=AuditHead.SINGLETON_ID).first()
    if head is None:
        last = AuditEvent._base_manager.order_by("-seq").values_list("seq", "hash").first()
        last_seq, last_hash = last if last is not None else (0, "")
        # INSERT ... ON CONFLICT DO NOTHING: two first appends racing create one head.
        AuditHead.objects.bulk_create(
            [AuditHead(pk=AuditHead.SINGLETON_ID, last_seq=last_seq, last_hash=last_hash)],
            ignore_conflicts=True,
        )
        head = AuditHead.objects.select_for_update().get(pk=AuditHead.SINGLETON_ID)
    return head


def _clip(value: str, field: str) -> str:
    """Fit a value to its column, so that what is hashed is exactly what is stored."""
    max_length: int | None = getattr(AuditEvent._meta.get_field(field), "max_length", None)
    text = str(value).replace("\x00", "")  # PostgreSQL text cannot hold NUL
    return text[:max_length] if max_length else text


def _clean_ip(ip: str | None) -> str | None:
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return None  # a garbled address is not worth failing the action for
    prepared = AuditEvent._meta.get_field("ip").get_prep_value(str(address))
    return str(prepared)


def _actor(actor: Any, token: ApiToken | None) -> Any:
    if actor is not None and getattr(actor, "is_authenticated", False):
        return actor
    if token is not None:
        return token.user
    return None  # AnonymousUser, or nobody (a system action)


@transaction.atomic
def audit_record(
    *,
    action: str,
    actor: Any = None,
    token: Any = None,
    ip: str | None = None,
    obj: Model | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    changes: dict[str, Any] | None = None,
    outcome: str = "success",
    detail: str = "",
    origin: Origin | None = None,
) -> AuditEvent:
    """Append one event to the audit trail, inside the caller's transaction (module docstring).

    `actor` is a user, AnonymousUser or None; `token` an ApiToken when the call came through one
    (its prefix is recorded; its user is the actor when `actor` is anonymous). With `obj`, the
    object's type, id and text default to its model name, pk and str(). For a failed login,
    name the attempted account in `object_repr` (object_type "user")."""
    if origin is not None:  # explicit token / ip win
        token = token if token is not None else origin.token
        ip = ip if ip is not None else origin.ip
    if not action:
        raise InvalidInput("An audit event needs an action.")
    if outcome not in OUTCOMES:
        raise InvalidInput(f"Unknown audit outcome {outcome!r}; expected one of {sorted(OUTCOMES)}.")
    if token is not None and not isinstance(token, ApiToken):
        raise InvalidInput("token must be an ApiToken.")
    try:
        clean_changes = normalise_changes(changes or {})
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Audit changes must be JSON-serialisable: {exc}") from exc
    if obj is not None:
        object_type = object_type or obj._meta.model_name or ""
        object_id = object_id or str(obj.pk)
        object_repr = object_repr or str(obj)
    user = _actor(actor, token)

    head = _head_locked()
    event = AuditEvent(
        seq=head.last_seq + 1,
        created_at=timezone.now(),
        actor=user,
        actor_name=_clip(user.get_username(), "actor_name") if user is not None else "",
        token_prefix=_clip(token.prefix, "token_prefix") if token is not None else "",
        ip=_clean_ip(ip),
        action=_clip(action, "action"),
        object_type=_clip(object_type, "object_type"),
        object_id=_clip(object_id, "object_id"),
        object_repr=_clip(object_repr, "object_repr"),
        changes=clean_changes,
        outcome=outcome,
        detail=str(detail).replace("\x00", ""),
        prev_hash=head.last_hash,
    )
    event.hash = event.compute_hash()
    event.save()
    head.last_seq, head.last_hash = event.seq, event.hash
    head.save(update_fields=["last_seq", "last_hash", "updated_at"])
    return event


def request_ip(request: HttpRequest | Request) -> str | None:
    """The client's address: REMOTE_ADDR, or, behind DOMUS_TRUSTED_PROXY_COUNT proxies, the
    X-Forwarded-For entry the outermost trusted proxy appended (earlier entries are the
    client's to forge)."""
    meta = request.META
    proxies = int(getattr(settings, "DOMUS_TRUSTED_PROXY_COUNT", 0))
    if proxies > 0:
        hops = [hop.strip() for hop in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= proxies:
            return str(hops[-proxies])
    remote = meta.get("REMOTE_ADDR")
    return str(remote) if remote else None


def audit_record_request(*, request: HttpRequest | Request, action: str, **kwargs: Any) -> AuditEvent:
    """`audit_record` with actor, token and ip taken from a Django or DRF request (explicit
    keyword arguments win)."""
    try:
        user = getattr(request, "user", None)
    except APIException:  # DRF: the credentials themselves were refused; record it as anonymous
        user = None
    auth = getattr(request, "auth", None) if isinstance(request, Request) else None
    kwargs.setdefault("actor", user)
    kwargs.setdefault("token", auth if isinstance(auth, ApiToken) else None)
    kwargs.setdefault("ip", request_ip(request))
    return audit_record(action=action, **kwargs)


def audit_prune(*, older_than_days: int) -> int:
    """Delete the events older than `older_than_days` and return how many went.

    The chain is pruned as a prefix (up to the first event that is still young), in batches,
    each in its own transaction holding the head lock; each batch records the last pruned
    event's seq and hash in the head as the anchor from which verification starts. A prune
    that removed anything is itself recorded ("audit.prune")."""
    if older_than_days < 1:
        raise InvalidInput("The audit retention must be at least one day.")
    cutoff = timezone.now() - timedelta(days=older_than_days)
    total = 0
    anchor = 0
    while True:
        with transaction.atomic():
            head = _head_locked()
            first_kept = (
                AuditEvent._base_manager.filter(seq__gt=head.anchor_seq, created_at__gte=cutoff)
                .order_by("seq")
                .values_list("seq", flat=True)
                .first()
            )
            limit = first_kept - 1 if first_kept is not None else head.last_seq
            anchor = head.anchor_seq
            through = min(limit, anchor + PRUNE_BATCH)
            if through <= head.anchor_seq:
                break
            # Never prune evidence of tampering: the segment must verify before it goes.
            segment = check_segment(
                AuditEvent._base_manager.filter(seq__gt=anchor, seq__lte=through),
                after_seq=anchor,
                after_hash=head.anchor_hash,
            )
            if not segment.result.ok or segment.last_seq != through:
                bad_seq = segment.result.first_bad_seq or segment.last_seq + 1
                raise Conflict(
                    f"Refusing to prune: the audit chain is broken at #{bad_seq} "
                    f"({segment.result.problem or 'missing'}); run `manage.py audit_verify`."
                )
            last_hash = segment.last_hash
            deleted, _ = AuditEvent._base_manager.filter(seq__lte=through).delete()
            head.anchor_seq, head.anchor_hash = through, last_hash
            head.save(update_fields=["anchor_seq", "anchor_hash", "updated_at"])
            total += deleted
            anchor = through
    if total:
        audit_record(
            action="audit.prune",
            object_type="audit",
            changes={"pruned": total, "through_seq": anchor, "older_than_days": older_than_days},
        )
    return total
