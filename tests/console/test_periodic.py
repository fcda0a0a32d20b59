"""The scheduler's periodic upkeep (console/jobs/periodic.py) and the tasks the apps register."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.contrib.sessions.models import Session
from django.db import OperationalError
from django.utils import timezone

from console.audit.models import AuditEvent
from console.audit.services import audit_record
from console.jobs import periodic
from domains.models import ConsoleTicket, Domain
from domains.tasks import console_tickets_purge
from hosts.models import Host

pytestmark = pytest.mark.django_db


def test_every_app_registers_its_upkeep() -> None:
    assert {
        "jobs: relay the outbox",
        "jobs: recover lost jobs",
        "audit: apply the retention",
        "sessions: clear the expired",
        "consoles: delete expired tickets",
    } <= set(periodic.TASKS)


def test_due_tasks_run_once_per_interval_and_a_failure_stops_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[str] = []

    def broken() -> None:
        runs.append("broken")
        raise OperationalError("the database is away")

    tasks = {
        "broken": periodic.PeriodicTask("broken", lambda: 10.0, broken),
        "fine": periodic.PeriodicTask("fine", lambda: 5.0, lambda: runs.append("fine")),
    }
    monkeypatch.setattr(periodic, "TASKS", tasks)
    assert periodic.run_due(now=100.0) == ["broken", "fine"]
    assert periodic.run_due(now=101.0) == []
    assert periodic.run_due(now=105.0) == ["fine"]
    assert periodic.run_due(now=110.0) == ["broken", "fine"]
    assert runs == ["broken", "fine", "fine", "broken", "fine"]


def test_expired_console_tickets_are_deleted_recent_ones_kept(user: Any, host: Host) -> None:
    domain = Domain.objects.create(name="web", host=host)
    now = timezone.now()
    old = ConsoleTicket.objects.create(
        key_hash="a" * 64, user=user, domain=domain, kind="serial", expires_at=now - timedelta(hours=2)
    )
    recent = ConsoleTicket.objects.create(
        key_hash="b" * 64, user=user, domain=domain, kind="serial", expires_at=now - timedelta(minutes=5)
    )
    assert console_tickets_purge() == "deleted 1 expired console tickets"
    assert not ConsoleTicket.objects.filter(pk=old.pk).exists()
    assert ConsoleTicket.objects.filter(pk=recent.pk).exists()


def test_the_audit_retention_comes_from_the_settings(settings: Any) -> None:
    settings.DOMUS_AUDIT_RETENTION_DAYS = 30
    with mock.patch("django.utils.timezone.now", return_value=timezone.now() - timedelta(days=31)):
        audit_record(action="domain.create")
    audit_record(action="domain.start")
    assert "older than 30 days" in periodic.TASKS["audit: apply the retention"].run()  # type: ignore[operator]
    assert AuditEvent.objects.filter(action="domain.start").exists()


def test_expired_sessions_are_cleared(client: Any, user: Any) -> None:
    client.force_login(user)
    Session.objects.create(
        session_key="x" * 32, session_data="", expire_date=timezone.now() - timedelta(days=1)
    )
    periodic.TASKS["sessions: clear the expired"].run()
    assert not Session.objects.filter(session_key="x" * 32).exists()
    assert Session.objects.count() == 1  # the live one stays
