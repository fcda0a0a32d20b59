from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection, transaction
from django.test import RequestFactory, override_settings
from rest_framework.request import Request

from console.access.services import api_token_issue
from console.audit.chain import HASHED_FIELDS, canonical_json
from console.audit.errors import AuditAppendOnly
from console.audit.models import AuditEvent, AuditHead
from console.audit.services import audit_record, audit_record_request
from console.audit.verify import audit_verify
from console.errors import InvalidInput
from hosts.models import Host

pytestmark = pytest.mark.django_db


def _raw(seq: int) -> Any:
    """The base manager: a queryset that bypasses the model's append-only guards."""
    return AuditEvent._base_manager.filter(seq=seq)


def test_events_chain_to_each_other(chain: list[AuditEvent]) -> None:
    events = list(AuditEvent.objects.order_by("seq"))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[0].prev_hash == ""
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
    head = AuditHead.objects.get()
    assert (head.last_seq, head.last_hash) == (6, events[-1].hash)


def test_hash_is_sha256_of_canonical_json(user: Any) -> None:
    event = audit_record(action="auth.login", actor=user, ip="10.0.0.7", changes={"b": 1, "a": [1.0, "x"]})
    event = AuditEvent.objects.get(pk=event.pk)  # as stored
    text = canonical_json({name: getattr(event, name) for name in HASHED_FIELDS})
    assert event.hash == hashlib.sha256(text.encode()).hexdigest()
    payload = json.loads(text)
    assert set(payload) == {*HASHED_FIELDS, "v"}
    assert payload["created_at"].endswith("Z") and len(payload["created_at"]) == len(
        "2025-01-01T00:00:00.000000Z"
    )
    assert payload["actor_name"] == "ana" and payload["ip"] == "10.0.0.7"
    assert list(json.loads(text)) == sorted(payload)  # sorted keys


def test_verify_ok_on_clean_chain(chain: list[AuditEvent]) -> None:
    result = audit_verify()
    assert (result.ok, result.checked, result.first_bad_seq, result.problem) == (True, 6, None, "")


def test_verify_ok_on_empty_trail(db: None) -> None:
    assert audit_verify().ok


def test_altered_changes_are_detected(chain: list[AuditEvent]) -> None:
    _raw(3).update(changes={"n": 999})
    result = audit_verify()
    assert not result.ok
    assert result.first_bad_seq == 3
    assert "altered" in result.problem
    assert result.checked == 2


@pytest.mark.parametrize(
    "field,value",
    [
        ("actor_name", "mallory"),
        ("outcome", "denied"),
        ("detail", "x"),
        ("ip", "10.9.9.9"),
        ("object_id", "77"),
    ],
)
def test_any_altered_field_is_detected(chain: list[AuditEvent], field: str, value: str) -> None:
    _raw(4).update(**{field: value})
    assert audit_verify().first_bad_seq == 4


def test_altered_timestamp_is_detected(chain: list[AuditEvent]) -> None:
    _raw(2).update(created_at=chain[1].created_at - dt.timedelta(microseconds=1))
    assert audit_verify().first_bad_seq == 2


def test_rehashed_row_breaks_the_next_link(chain: list[AuditEvent]) -> None:
    forged = AuditEvent.objects.get(seq=3)
    forged.changes = {"n": 999}
    _raw(3).update(changes=forged.changes, hash=forged.compute_hash())
    result = audit_verify()
    assert result.first_bad_seq == 4
    assert "prev_hash" in result.problem


def test_deleted_middle_row_is_detected(chain: list[AuditEvent]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {AuditEvent._meta.db_table} WHERE seq = %s", [4])
    result = audit_verify()
    assert not result.ok
    assert result.first_bad_seq == 4
    assert "missing" in result.problem


def test_deleted_last_row_is_detected(chain: list[AuditEvent]) -> None:
    _raw(6).delete()
    result = audit_verify()
    assert result.first_bad_seq == 6
    assert "missing" in result.problem


def test_reordered_rows_are_detected(chain: list[AuditEvent]) -> None:
    _raw(3).update(seq=100)
    _raw(4).update(seq=3)
    _raw(100).update(seq=4)
    assert audit_verify().first_bad_seq == 3


def test_inserted_row_is_detected(chain: list[AuditEvent]) -> None:
    # Make room after seq 2 and insert a well-formed event linking to 2: event 4 (old 3) no longer links.
    for seq in range(6, 2, -1):
        _raw(seq).update(seq=seq + 1)
    base = AuditEvent.objects.get(seq=2)
    forged = AuditEvent(seq=3, created_at=base.created_at, action="domain.delete", prev_hash=base.hash)
    forged.hash = forged.compute_hash()
    AuditEvent.objects.bulk_create([forged])
    assert audit_verify().first_bad_seq == 4


def test_appended_row_without_head_is_detected(chain: list[AuditEvent]) -> None:
    last = AuditEvent.objects.get(seq=6)
    forged = AuditEvent(seq=7, created_at=last.created_at, action="domain.delete", prev_hash=last.hash)
    forged.hash = forged.compute_hash()
    AuditEvent.objects.bulk_create([forged])
    result = audit_verify()
    assert result.first_bad_seq == 7
    assert "head" in result.problem


def test_missing_head_is_detected(chain: list[AuditEvent]) -> None:
    AuditHead.objects.all().delete()
    assert audit_verify().first_bad_seq == 1


def test_save_of_existing_event_is_refused(chain: list[AuditEvent]) -> None:
    event = AuditEvent.objects.get(seq=2)
    event.detail = "rewritten"
    with pytest.raises(AuditAppendOnly):
        event.save()
    assert AuditEvent.objects.get(seq=2).detail == ""


def test_delete_is_refused(chain: list[AuditEvent]) -> None:
    with pytest.raises(AuditAppendOnly):
        AuditEvent.objects.get(seq=2).delete()
    with pytest.raises(AuditAppendOnly):
        AuditEvent.objects.filter(seq__lte=3).delete()
    with pytest.raises(AuditAppendOnly):
        AuditEvent.objects.filter(seq=3).update(detail="x")
    assert AuditEvent.objects.count() == 6
    assert audit_verify().ok


def test_direct_create_is_refused(db: None) -> None:
    with pytest.raises(AuditAppendOnly):
        AuditEvent.objects.create(seq=1, action="domain.create", created_at=dt.datetime.now(dt.UTC))


def test_rolled_back_transaction_leaves_no_event(user: Any) -> None:
    audit_record(action="auth.login", actor=user)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        audit_record(action="domain.create", actor=user)
        raise Boom
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["auth.login"]
    assert AuditHead.objects.get().last_seq == 1
    audit_record(action="domain.delete", actor=user)
    assert audit_verify().ok and audit_verify().checked == 2


def test_deleting_the_user_keeps_name_and_chain(chain: list[AuditEvent], user: Any) -> None:
    user.delete()
    event = AuditEvent.objects.get(seq=1)
    assert event.actor_id is None
    assert event.actor_name == "ana"
    assert audit_verify().ok


def test_object_fields_derived_from_obj(host: Host, user: Any) -> None:
    event = audit_record(action="host.update", actor=user, obj=host, changes={"name": ["h0", "h1"]})
    assert (event.object_type, event.object_id, event.object_repr) == ("host", str(host.pk), str(host))


def test_token_prefix_and_its_user(user: Any) -> None:
    token, _ = api_token_issue(user=user)
    event = audit_record(action="domain.create", actor=AnonymousUser(), token=token)
    assert event.token_prefix == token.prefix
    assert event.actor_id == user.pk and event.actor_name == "ana"


def test_anonymous_actor(db: None) -> None:
    event = audit_record(
        action="auth.login_failed",
        actor=AnonymousUser(),
        object_type="user",
        object_repr="root",
        outcome="failed",
    )
    assert event.actor_id is None and event.actor_name == ""
    assert audit_verify().ok


def test_changes_are_normalised_to_stable_json(db: None) -> None:
    key = uuid.uuid4()
    audit_record(
        action="x.y",
        changes={
            "when": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "id": key,
            "big": 1e20,
            "f": 0.5,
            "n": 2.0,
        },
    )
    event = AuditEvent.objects.get()
    assert event.changes == {"when": "2025-01-02T03:04:05Z", "id": str(key), "big": 10**20, "f": 0.5, "n": 2}
    assert audit_verify().ok


@pytest.mark.parametrize(
    "kwargs",
    [
        {"action": ""},
        {"action": "a.b", "outcome": "maybe"},
        {"action": "a.b", "changes": {"x": float("nan")}},
    ],
)
def test_invalid_input(db: None, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        audit_record(**kwargs)
    assert not AuditEvent.objects.exists()


def test_long_values_are_clipped_consistently(db: None) -> None:
    audit_record(action="domain.create", object_repr="x" * 500, object_id="9" * 100)
    event = AuditEvent.objects.get()
    assert len(event.object_repr) == 200
    assert audit_verify().ok


def test_ipv6_and_garbage_addresses(db: None) -> None:
    audit_record(action="a.b", ip="2001:DB8:0:0::1")
    audit_record(action="a.b", ip="not-an-address")
    assert list(AuditEvent.objects.order_by("seq").values_list("ip", flat=True)) == ["2001:db8::1", None]
    assert audit_verify().ok


def test_record_request_uses_remote_addr(user: Any) -> None:
    request = RequestFactory().post("/x", REMOTE_ADDR="192.0.2.5", HTTP_X_FORWARDED_FOR="203.0.113.9")
    request.user = user
    event = audit_record_request(request=request, action="domain.create")
    assert (event.actor_name, event.ip, event.token_prefix) == ("ana", "192.0.2.5", "")


@override_settings(DOMUS_TRUSTED_PROXY_COUNT=1)
def test_record_request_behind_trusted_proxy(user: Any) -> None:
    request = RequestFactory().post(
        "/x", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.9"
    )
    request.user = user
    assert audit_record_request(request=request, action="auth.login").ip == "203.0.113.9"


def test_record_request_with_drf_token(user: Any) -> None:
    token, _ = api_token_issue(user=user)
    django_request = RequestFactory().post("/x", REMOTE_ADDR="192.0.2.8")
    request = Request(django_request)
    request.user, request.auth = user, token
    event = audit_record_request(request=request, action="domain.power", outcome="denied", detail="no")
    assert (event.actor_name, event.token_prefix, event.ip, event.outcome) == (
        "ana",
        token.prefix,
        "192.0.2.8",
        "denied",
    )
