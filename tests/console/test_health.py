from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from hosts.models import Host

pytestmark = pytest.mark.django_db


def test_no_worker_means_503_with_the_reason(client: Any, user: Any) -> None:
    client.force_login(user)
    response = client.get("/healthz")
    data = response.json()
    assert response.status_code == 503  # no Celery worker runs in unit tests
    assert data["database"]["ok"] and data["redis"]["ok"]
    assert data["worker"] == {"ok": False, "workers": []}


def test_a_host_whose_heartbeat_stopped_is_not_reachable(client: Any, user: Any) -> None:
    # hostwatch died with the host still marked online: its heartbeat time gives it away.
    Host.objects.create(
        name="fresh", url="http://127.0.0.1:1", secret="x" * 32, state="online", last_seen_at=timezone.now()
    )
    Host.objects.create(
        name="stale",
        url="http://127.0.0.1:2",
        secret="x" * 32,
        state="online",
        last_seen_at=timezone.now() - timedelta(minutes=5),
    )
    client.force_login(user)
    agents = client.get("/healthz").json()["agents"]
    assert agents["hosts"] == {"fresh": True, "stale": False}
    assert agents["ok"] is False


def test_anonymous_callers_get_verdicts_not_names(client: Any) -> None:
    Host.objects.create(
        name="secret-name",
        url="http://127.0.0.1:1",
        secret="x" * 32,
        state="online",
        last_seen_at=timezone.now(),
    )
    body = client.get("/healthz").content.decode()
    assert "secret-name" not in body
    data = client.get("/healthz").json()
    assert set(data["agents"]) == {"ok", "online", "total"}
    assert set(data["worker"]) == {"ok"}


def test_one_host_down_leaves_the_console_healthy(client: Any, monkeypatch: Any) -> None:
    """A load balancer must not pull a web node because a hypervisor host is down; but when no
    host is heard at all, hostwatch is gone and that is the console's problem."""
    monkeypatch.setattr("console.health._worker", lambda: {"ok": True, "workers": ["w"]})
    fresh = {"state": "online", "last_seen_at": timezone.now()}
    up = Host.objects.create(name="up", url="http://127.0.0.1:1", secret="x" * 32, **fresh)
    Host.objects.create(name="down", url="http://127.0.0.1:2", secret="x" * 32, state="offline")
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["agents"]["ok"] is False
    Host.objects.filter(pk=up.pk).update(last_seen_at=timezone.now() - timedelta(minutes=5))
    assert client.get("/healthz").status_code == 503
