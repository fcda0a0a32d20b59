from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from console.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_verify_ok(chain: list[AuditEvent]) -> None:
    out = StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().strip() == "audit chain OK: 6 events"


def test_verify_broken_exits_nonzero(chain: list[AuditEvent]) -> None:
    AuditEvent._base_manager.filter(seq=5).update(changes={"n": 0})
    with pytest.raises(CommandError, match="seq 5") as exc:
        call_command("audit_verify")
    assert exc.value.returncode == 1


def test_prune_default_retention(record_at: Callable[..., AuditEvent]) -> None:
    now = timezone.now()
    record_at(now - dt.timedelta(days=400), action="a.old")
    record_at(now - dt.timedelta(days=100), action="a.mid")
    out = StringIO()
    call_command("audit_prune", stdout=out)
    assert "pruned 1 audit events older than 365 days" in out.getvalue()
    with override_settings(DOMUS_AUDIT_RETENTION_DAYS=30):
        call_command("audit_prune", stdout=StringIO())
    assert list(AuditEvent.objects.order_by("seq").values_list("action", flat=True)) == ["audit.prune"] * 2
    call_command("audit_verify", stdout=StringIO())


def test_prune_days_option(record_at: Callable[..., AuditEvent]) -> None:
    record_at(timezone.now() - dt.timedelta(days=10), action="a.old")
    call_command("audit_prune", "--days", "5", stdout=StringIO())
    assert not AuditEvent.objects.filter(action="a.old").exists()


def test_prune_bad_days_is_a_command_error(db: None) -> None:
    with pytest.raises(CommandError, match="at least one day"):
        call_command("audit_prune", "--days", "0")
