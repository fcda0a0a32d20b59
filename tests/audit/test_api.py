from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from console.access.services import api_token_issue
from console.audit.chain import HASHED_FIELDS, event_hash
from console.audit.models import AuditEvent
from console.audit.services import audit_record
from tests.conftest import quiet_login, quiet_token

pytestmark = pytest.mark.django_db

URL = "/api/v1/audit/"
EXPORT = "/api/v1/audit/export/"


@pytest.fixture
def admin(django_user_model: Any) -> Any:
    # A superuser holds audit.view under any policy; the walking skeleton's and the roles'.
    return django_user_model.objects.create_superuser("root", password="s3cret-pass")


@pytest.fixture
def admin_api(admin: Any) -> APIClient:
    key = quiet_token(admin)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def trail(user: Any, admin: Any, record_at: Callable[..., AuditEvent]) -> None:
    now = timezone.now()
    record_at(now - dt.timedelta(days=3), action="auth.login", actor=user, ip="192.0.2.1")
    record_at(
        now - dt.timedelta(days=2),
        action="domain.create",
        actor=user,
        object_type="domain",
        object_id="7",
        object_repr="web1",
        changes={"vcpus": [None, 2]},
    )
    record_at(
        now - dt.timedelta(days=1),
        action="domain.delete",
        actor=admin,
        object_type="domain",
        object_id="7",
        outcome="denied",
        detail="=cmd|' /C calc'!A0",
    )
    record_at(now, action="auth.login_failed", object_type="user", object_repr="ana", outcome="failed")


def _seqs(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["seq"] for row in response.json()["results"]]


def test_list_newest_first(admin_api: APIClient, trail: None) -> None:
    body = admin_api.get(URL).json()
    assert body["count"] == 4
    assert [r["seq"] for r in body["results"]] == [4, 3, 2, 1]
    row = body["results"][2]
    assert row["actor"] == "ana" and row["changes"] == {"vcpus": [None, 2]} and row["object_repr"] == "web1"
    assert set(row) == {*HASHED_FIELDS, "hash"} - {"actor_name"} | {"actor"}


def test_retrieve_by_seq(admin_api: APIClient, trail: None) -> None:
    assert admin_api.get(f"{URL}2/").json()["action"] == "domain.create"
    assert admin_api.get(f"{URL}99/").status_code == 404


@pytest.mark.parametrize(
    "query,expected",
    [
        ("actor=ana", [2, 1]),
        ("actor=root", [3]),
        ("action=domain.create", [2]),
        ("action__startswith=domain.", [3, 2]),
        ("action__startswith=auth.", [4, 1]),
        ("object_type=domain&object_id=7", [3, 2]),
        ("outcome=denied", [3]),
        ("outcome=failed", [4]),
    ],
)
def test_filters(admin_api: APIClient, trail: None, query: str, expected: list[int]) -> None:
    assert _seqs(admin_api.get(f"{URL}?{query}")) == expected


def test_time_filters(admin_api: APIClient, trail: None) -> None:
    now = timezone.now()
    since = (now - dt.timedelta(days=2, hours=1)).isoformat()
    until = (now - dt.timedelta(hours=12)).isoformat()
    assert _seqs(admin_api.get(URL, {"since": since, "until": until})) == [3, 2]
    assert _seqs(
        admin_api.get(URL, {"since": (now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")})
    ) == [4]


@pytest.mark.parametrize("query", ["since=yesterday", "until=2025-13-01", "outcome=maybe"])
def test_bad_filters_are_400(admin_api: APIClient, trail: None, query: str) -> None:
    response = admin_api.get(f"{URL}?{query}")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert set(response.json()["fields"]) <= {"since", "until", "outcome"}


def test_read_only(admin_api: APIClient, trail: None) -> None:
    assert admin_api.post(URL, {"action": "x"}, format="json").status_code == 405
    assert admin_api.delete(f"{URL}1/").status_code == 405
    assert AuditEvent.objects.count() == 4


def test_csv_export(admin_api: APIClient, trail: None) -> None:
    response = admin_api.get(EXPORT, {"format": "csv", "action__startswith": "domain."})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:6] == ["seq", "created_at", "actor", "token_prefix", "ip", "action"]
    assert rows[0][-2:] == ["prev_hash", "hash"]
    records = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert [r["seq"] for r in records] == ["3", "2"]
    assert records[1]["changes"] == '{"vcpus": [null, 2]}'
    assert records[0]["detail"] == "'=cmd|' /C calc'!A0"  # no formula for spreadsheets
    assert records[0]["hash"] == AuditEvent.objects.get(seq=3).hash


def test_csv_is_the_default_export(admin_api: APIClient, trail: None) -> None:
    response = admin_api.get(EXPORT)
    assert response["Content-Type"].startswith("text/csv")
    assert len(b"".join(response.streaming_content).decode().splitlines()) == 5


def test_json_export_reverifies(admin_api: APIClient, trail: None) -> None:
    response = admin_api.get(EXPORT, {"format": "json"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    rows = json.loads(b"".join(response.streaming_content))
    assert [r["seq"] for r in rows] == [4, 3, 2, 1]
    # An exported trail can be checked away from the database.
    for row in rows:
        fields = {
            **row,
            "actor_name": row["actor"],
            "created_at": dt.datetime.fromisoformat(row["created_at"]),
        }
        assert event_hash(fields) == row["hash"]
    by_seq = {r["seq"]: r for r in rows}
    assert all(by_seq[s]["prev_hash"] == by_seq[s - 1]["hash"] for s in (2, 3, 4))


def test_json_export_filtered_and_empty(admin_api: APIClient, trail: None) -> None:
    rows = json.loads(
        b"".join(admin_api.get(EXPORT, {"format": "json", "outcome": "denied"}).streaming_content)
    )
    assert [r["seq"] for r in rows] == [3]
    rows = json.loads(
        b"".join(admin_api.get(EXPORT, {"format": "json", "actor": "nobody"}).streaming_content)
    )
    assert rows == []


def test_export_unknown_format(admin_api: APIClient, trail: None) -> None:
    response = admin_api.get(EXPORT, {"format": "xml"})
    assert response.status_code == 400
    assert response.json()["fields"] == {"format": ["expected csv or json"]}


@pytest.mark.parametrize("url", [URL, f"{URL}1/", EXPORT, f"{EXPORT}?format=json", f"{EXPORT}?format=csv"])
def test_anonymous_is_refused(trail: None, url: str) -> None:
    assert APIClient().get(url).status_code == 401


@pytest.mark.parametrize("url", [URL, f"{URL}1/", f"{EXPORT}?format=csv"])
def test_without_audit_view_is_refused(
    admin_api: APIClient, trail: None, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def deny(user: Any, action: str, obj: Any = None) -> bool:
        asked.append(action)
        return False

    monkeypatch.setattr("console.audit.api.views.has_perm", deny)
    assert admin_api.get(url).status_code == 403
    assert asked == ["audit.view"]


def test_token_call_is_recordable(admin: Any) -> None:
    token, key = api_token_issue(user=admin)
    event = audit_record(action="token.issue", actor=admin, token=token, obj=token)
    assert event.object_type == "apitoken" and event.token_prefix == key[:8]


# The page


@pytest.fixture
def browser(admin: Any) -> Client:
    client = Client()
    quiet_login(client, admin)
    return client


def test_page_lists_and_filters(browser: Client, trail: None) -> None:
    response = browser.get("/audit/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('data-seq="') == 4
    assert "domain.create" in html and "web1" in html
    response = browser.get("/audit/", {"action__startswith": "domain.", "outcome": "denied"})
    html = response.content.decode()
    assert html.count('data-seq="') == 1
    assert "/api/v1/audit/export/?format=csv&amp;action__startswith=domain.&amp;outcome=denied" in html
    assert "/api/v1/audit/export/?format=json&amp;action__startswith=domain.&amp;outcome=denied" in html


def test_page_paginates_by_100(browser: Client) -> None:
    for i in range(105):
        audit_record(action="job.finished", object_id=str(i))
    html = browser.get("/audit/").content.decode()
    assert html.count('data-seq="') == 100
    assert "Page 1 of 2" in html
    html = browser.get("/audit/", {"page": 2}).content.decode()
    assert html.count('data-seq="') == 5


def test_page_bad_filter_is_explained(browser: Client, trail: None) -> None:
    response = browser.get("/audit/", {"since": "soon"})
    assert response.status_code == 200
    assert 'id="filter-errors"' in response.content.decode()


def test_page_requires_login(trail: None) -> None:
    response = Client().get("/audit/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_page_requires_audit_view(browser: Client, trail: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("console.audit.views.has_perm", lambda user, action, obj=None: False)
    response = browser.get("/audit/")
    assert response.status_code == 403
    assert "audit.view" in response.content.decode()


@pytest.mark.parametrize(
    ("query", "status"),
    [
        # Python parses any offset; PostgreSQL refuses those beyond +-15:59: they are UTC first.
        ({"since": "2025-06-18T15:09:12+23:16"}, 200),
        ({"until": "2025-06-18T15:09:12-23:59"}, 200),
        ({"since": "9999-12-31T23:00:00-05:00"}, 400),  # past year 9999 once in UTC
    ],
)
def test_a_moment_with_any_offset_is_taken_in_utc(admin_api: Any, query: dict[str, str], status: int) -> None:
    response = admin_api.get(URL, query)
    assert response.status_code == status, response.content
