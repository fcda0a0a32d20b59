"""Verification of the audit chain (read-only)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Max, QuerySet

from console.audit.models import AuditEvent, AuditHead

VERIFY_CHUNK = 2000
VERIFY_ATTEMPTS = 3


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str = ""


@dataclass(frozen=True)
class Segment:
    result: VerifyResult
    last_seq: int  # the last event checked (or the starting point)
    last_hash: str


def check_segment(events: QuerySet[AuditEvent], *, after_seq: int, after_hash: str) -> Segment:
    """Check that `events`, in seq order, continue the chain from (after_seq, after_hash):
    no seq missing, each links to the one before, each hash matches its contents."""
    expected, prev, checked = after_seq + 1, after_hash, 0

    def bad(seq: int, problem: str) -> Segment:
        return Segment(VerifyResult(False, checked, seq, problem), expected - 1, prev)

    for event in events.order_by("seq").iterator(chunk_size=VERIFY_CHUNK):
        if event.seq != expected:
            return bad(expected, f"event #{expected} is missing (next is #{event.seq})")
        if event.prev_hash != prev:
            if expected - 1 > after_seq:
                origin = f"event #{expected - 1}"
            else:
                origin = "the prune anchor" if after_seq else "the start of the chain"
            return bad(event.seq, f"prev_hash does not match the hash of {origin}")
        if event.compute_hash() != event.hash:
            return bad(event.seq, "contents do not match the hash (altered)")
        prev, expected, checked = event.hash, expected + 1, checked + 1
    return Segment(VerifyResult(True, checked), expected - 1, prev)


def _head() -> AuditHead | None:
    return AuditHead.objects.filter(pk=AuditHead.SINGLETON_ID).first()


def _verify_once(head: AuditHead | None) -> VerifyResult:
    if head is None:
        first = AuditEvent._base_manager.order_by("seq").values_list("seq", flat=True).first()
        if first is None:
            return VerifyResult(ok=True, checked=0)
        return VerifyResult(False, 0, first, "the chain head (AuditHead) is missing")
    events = AuditEvent._base_manager.filter(seq__gt=head.anchor_seq, seq__lte=head.last_seq)
    # Bounded by the head read first: events appended meanwhile are checked next time.
    segment = check_segment(events, after_seq=head.anchor_seq, after_hash=head.anchor_hash)
    if not segment.result.ok:
        return segment.result
    expected, prev, checked = segment.last_seq + 1, segment.last_hash, segment.result.checked
    if expected - 1 != head.last_seq:
        return VerifyResult(
            False, checked, expected, f"event #{expected} is missing (the chain ends at #{head.last_seq})"
        )
    if prev != head.last_hash:
        return VerifyResult(False, checked, head.last_seq, "the last event does not match the chain head")
    # An event past the head was not appended by audit_record. Read the events' end before
    # the head again: any event appended legitimately by then has moved the head past it.
    newest = AuditEvent._base_manager.aggregate(newest=Max("seq"))["newest"]
    now_head = _head()
    if newest is not None and now_head is not None and newest > now_head.last_seq:
        return VerifyResult(
            False, checked, now_head.last_seq + 1, "events past the chain head (not appended by audit_record)"
        )
    return VerifyResult(ok=True, checked=checked)


def audit_verify() -> VerifyResult:
    """Recompute every hash in seq order from the prune anchor, checking the prev_hash links,
    that no seq is missing, and that the chain ends where its head says."""
    result = VerifyResult(ok=True, checked=0)
    for _ in range(VERIFY_ATTEMPTS):
        head = _head()
        result = _verify_once(head)
        after = _head()
        # A prune that ran meanwhile moves the anchor and removes events: look again.
        moved = head is not None and after is not None and after.anchor_seq != head.anchor_seq
        if result.ok or not moved:
            return result
    return result
