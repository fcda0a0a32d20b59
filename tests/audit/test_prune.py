from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from console.audit.models import AuditEvent, AuditHead
from console.audit.services import audit_prune, audit_record
from console.audit.verify import audit_verify
from console.errors import InvalidInput

pytestmark = pytest.mark.django_db


def _ages(record_at: Callable[..., AuditEvent], *days_ago: int) -> None:
    now = timezone.now()
    for days in days_ago:
        record_at(now - dt.timedelta(days=days), action="domain.start", changes={"age": days})


def test_prune_keeps_the_rest_verifiable(record_at: Callable[..., AuditEvent]) -> None:
    _ages(record_at, 400, 380, 370, 10, 1)
    pruned = audit_prune(older_than_days=365)
    assert pruned == 3
    head = AuditHead.objects.get()
    assert head.anchor_seq == 3
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", "action")) == [
        (4, "domain.start"),
        (5, "domain.start"),
        (6, "audit.prune"),
    ]
    assert AuditEvent.objects.get(seq=6).changes == {"pruned": 3, "through_seq": 3, "older_than_days": 365}
    result = audit_verify()
    assert (result.ok, result.checked) == (True, 3)
    audit_record(action="domain.stop")
    assert audit_verify().ok


def test_prune_stops_at_the_first_young_event(record_at: Callable[..., AuditEvent]) -> None:
    # Clocks of different processes may disagree: a young event keeps everything after it.
    _ages(record_at, 400, 5, 400, 400)
    assert audit_prune(older_than_days=365) == 1
    assert audit_verify().ok


def test_prune_everything_then_append(record_at: Callable[..., AuditEvent]) -> None:
    _ages(record_at, 400, 400)
    assert audit_prune(older_than_days=30) == 2
    assert audit_verify().ok
    assert audit_prune(older_than_days=30) == 0  # nothing old left; records nothing
    assert AuditEvent.objects.count() == 1


def test_tampering_after_prune_is_detected(record_at: Callable[..., AuditEvent]) -> None:
    _ages(record_at, 400, 400, 3, 2)
    audit_prune(older_than_days=365)
    AuditEvent._base_manager.filter(seq=3).update(detail="forged")
    assert audit_verify().first_bad_seq == 3


def test_first_event_after_anchor_must_link_to_it(record_at: Callable[..., AuditEvent]) -> None:
    _ages(record_at, 400, 400, 3, 2)
    audit_prune(older_than_days=365)
    AuditHead.objects.update(anchor_hash="0" * 64)
    result = audit_verify()
    assert result.first_bad_seq == 3 and "anchor" in result.problem


def test_prune_in_batches(record_at: Callable[..., AuditEvent], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("console.audit.services.PRUNE_BATCH", 2)
    _ages(record_at, 400, 400, 400, 400, 400, 1)
    assert audit_prune(older_than_days=100) == 5
    assert AuditHead.objects.get().anchor_seq == 5
    assert audit_verify().ok


@pytest.mark.parametrize("days", [0, -1])
def test_retention_must_be_positive(db: None, days: int) -> None:
    with pytest.raises(InvalidInput):
        audit_prune(older_than_days=days)


def test_prune_refuses_a_broken_chain(record_at: Callable[..., AuditEvent]) -> None:
    from console.errors import Conflict

    _ages(record_at, 400, 400, 400)
    AuditEvent._base_manager.filter(seq=2).delete()
    with pytest.raises(Conflict):
        audit_prune(older_than_days=365)
    # nothing changed: the evidence is kept
    assert AuditEvent.objects.count() == 2


def test_user_is_irrelevant_to_prune(user: Any, record_at: Callable[..., AuditEvent]) -> None:
    record_at(timezone.now() - dt.timedelta(days=900), action="auth.login", actor=user)
    assert audit_prune(older_than_days=365) == 1
