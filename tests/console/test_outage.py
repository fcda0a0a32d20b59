"""During an outage of the database or Redis, the API answers its JSON error shape with a 503
saying what is down, pages a plain 503 page, and /healthz stays JSON: never Django's HTML 500."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery
from django.db import DataError, IntegrityError, InternalError, OperationalError
from django.test import Client
from rest_framework.test import APIClient

from console.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def raising_client() -> Client:
    """A client that gets the response a browser would (the test client re-raises by default)."""
    return Client(raise_request_exception=False)


def _break_domain_list(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr("domains.api.views.domain_search", broken)
    monkeypatch.setattr("domains.views.domain_page", broken)


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (
            OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused'),
            "database",
        ),
        (redis.ConnectionError("Error 111 connecting to /var/redis.sock. Connection refused."), "Redis"),
    ],
)
def test_api_answers_json_503_naming_what_is_down(
    user: Any, monkeypatch: pytest.MonkeyPatch, error: Exception, down: str
) -> None:
    _break_domain_list(monkeypatch, error)
    api = APIClient(raise_request_exception=False)
    api.force_authenticate(user)
    response = api.get("/api/v1/domains/")
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response["Retry-After"]
    body = response.json()
    assert (
        body["error"] == "unavailable" and down in body["detail"] and "Connection refused" in body["detail"]
    )


def test_a_page_gets_a_plain_503_page(
    user: Any, raising_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break_domain_list(monkeypatch, OperationalError("server closed the connection unexpectedly"))
    raising_client.force_login(user)
    response = raising_client.get("/")
    assert response.status_code == 503
    text = response.content.decode()
    assert "Temporarily unavailable" in text and "The database is unreachable" in text


def test_any_other_crash_in_the_api_is_a_json_500(user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _break_domain_list(monkeypatch, KeyError("bug"))
    api = APIClient(raise_request_exception=False)
    api.force_authenticate(user)
    response = api.get("/api/v1/domains/")
    assert response.status_code == 500 and response.json()["error"] == "internal"
    assert "bug" not in response.content.decode()  # no internals to the caller


@pytest.mark.parametrize(
    "error",
    [
        DataError('time zone displacement out of range: "2629-06-18 15:09:12+23:16"'),
        IntegrityError("duplicate key value violates unique constraint"),
        InternalError("current transaction is aborted, commands ignored until end of transaction block"),
    ],
)
def test_bad_data_is_not_an_outage(user: Any, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """A database that refuses a value is up: saying it is unreachable sends people looking for
    an outage that is not there (and a client retrying what will never work)."""
    _break_domain_list(monkeypatch, error)
    api = APIClient(raise_request_exception=False)
    api.force_authenticate(user)
    response = api.get("/api/v1/domains/")
    assert response.status_code == 500 and response.json()["error"] == "internal"


def test_healthz_is_json_503_naming_redis_when_redis_is_down(
    client: Client, user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    gone = tmp_path / "gone.sock"
    settings.REDIS_URL = f"unix://{gone}"
    # The console's Celery app, as configured, but for a broker that is not there.
    app = Celery("domus", broker=f"redis+socket://{gone}")
    app.conf.broker_transport_options = celery_app.conf.broker_transport_options
    monkeypatch.setattr("console.health.celery_app", app)
    client.force_login(user)
    response = client.get("/healthz")
    assert response.status_code == 503 and response["Content-Type"] == "application/json"
    body = response.json()
    assert body["ok"] is False and body["redis"]["ok"] is False and body["worker"]["ok"] is False
    assert "redis" in body["down"] and "worker" in body["down"]
    assert "No such file" in body["redis"]["error"]


def test_healthz_is_json_503_naming_the_database_when_it_is_down(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db.backends.base.base import BaseDatabaseWrapper

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr(BaseDatabaseWrapper, "cursor", refuse)
    monkeypatch.setattr("console.health._worker", lambda: {"ok": True, "workers": ["w"]})
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == {"ok": False} and "database" in body["down"]
    assert body["agents"] == {"ok": False} and body["jobs"] == {"ok": False}
