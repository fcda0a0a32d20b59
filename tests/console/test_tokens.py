from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from console.access.models import ApiToken
from console.access.services import api_token_issue
from console.audit.models import AuditEvent
from domains.models import Domain
from hosts.models import Host

pytestmark = pytest.mark.django_db


def client(key: str) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {key}", REMOTE_ADDR="192.0.2.7")
    return c


def test_issue_shows_the_key_once_and_lists_without_it(api: APIClient) -> None:
    created = api.post("/api/v1/tokens/", {"name": "ci"}, format="json")
    assert created.status_code == 201, created.content
    key = created.json()["key"]
    listed = api.get("/api/v1/tokens/").json()["results"]
    assert {t["name"] for t in listed} >= {"ci"}
    assert all("key" not in t for t in listed)
    assert key not in api.get("/api/v1/tokens/").content.decode()
    assert client(key).get("/api/v1/domains/").status_code == 200


def test_last_use_time_and_address_are_recorded(user: Any) -> None:
    token, key = api_token_issue(user=user, name="t")
    client(key).get("/api/v1/domains/")
    token.refresh_from_db()
    assert token.last_used_at is not None and token.last_used_ip == "192.0.2.7"


def test_expired_token_is_refused(user: Any) -> None:
    token, key = api_token_issue(user=user, name="t", expires_at=timezone.now() + timedelta(hours=1))
    assert client(key).get("/api/v1/domains/").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client(key).get("/api/v1/domains/").status_code == 401


def test_revoked_token_is_refused(api: APIClient, user: Any) -> None:
    token, key = api_token_issue(user=user, name="t")
    assert api.delete(f"/api/v1/tokens/{token.pk}/").status_code == 200
    assert client(key).get("/api/v1/domains/").status_code == 401


def test_read_only_token_cannot_write(user: Any, host: Host) -> None:
    _, key = api_token_issue(user=user, name="ro", read_only=True)
    ro = client(key)
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF)
    assert ro.get(f"/api/v1/domains/{domain.pk}/").status_code == 200
    assert ro.post(f"/api/v1/domains/{domain.pk}/start/").status_code == 403
    assert ro.delete(f"/api/v1/domains/{domain.pk}/").status_code == 403
    assert ro.post("/api/v1/tokens/", {"name": "more"}, format="json").status_code == 403
    assert not domain.jobs.exists()


def test_token_limited_to_some_permissions(user: Any, host: Host) -> None:
    _, key = api_token_issue(user=user, name="viewer", permissions=["domain.view"])
    limited = client(key)
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.RUNNING)
    assert limited.get(f"/api/v1/domains/{domain.pk}/").status_code == 200
    response = limited.post(f"/api/v1/domains/{domain.pk}/start/")
    assert response.status_code == 403 and "token" in response.json()["detail"]
    assert limited.get("/api/v1/hosts/").json()["results"] == []  # host.view not granted to it
    # ... and it cannot mint a broader token
    assert limited.post("/api/v1/tokens/", {"name": "all"}, format="json").status_code == 403
    narrower = limited.post("/api/v1/tokens/", {"name": "n", "permissions": ["domain.view"]}, format="json")
    assert narrower.status_code == 201


def test_unknown_permission_or_past_expiry_is_a_field_error(api: APIClient) -> None:
    bad = api.post("/api/v1/tokens/", {"name": "x", "permissions": ["domain.fly"]}, format="json")
    assert bad.status_code == 400 and "permissions" in bad.json()["fields"]
    past = (timezone.now() - timedelta(days=1)).isoformat()
    bad = api.post("/api/v1/tokens/", {"name": "x", "expires_at": past}, format="json")
    assert bad.status_code == 400 and "expires_at" in bad.json()["fields"]


def test_one_cannot_revoke_or_see_another_users_tokens(api: APIClient, django_user_model: Any) -> None:
    bob = django_user_model.objects.create_user("bob", password="x-pass-1234")
    token, _ = api_token_issue(user=bob, name="bob's")
    assert api.get(f"/api/v1/tokens/{token.pk}/").status_code == 404
    assert api.delete(f"/api/v1/tokens/{token.pk}/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_a_token_never_mints_one_that_outlives_it(user: Any) -> None:
    """Issue 18: a token expiring in 10 minutes created one expiring in 2099."""
    parent, key = api_token_issue(user=user, name="short", expires_at=timezone.now() + timedelta(minutes=10))
    asked = {"name": "long", "expires_at": "2099-01-01T00:00:00Z"}
    created = client(key).post("/api/v1/tokens/", asked, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["expiry_capped"] is True
    child = ApiToken.objects.get(name="long")
    assert child.expires_at == parent.expires_at
    assert body["expires_at"].startswith(parent.expires_at.strftime("%Y-%m-%dT%H:%M"))
    issued = AuditEvent.objects.get(action="token.issue", object_id=str(child.pk))
    assert issued.changes["expires_at_asked"].startswith("2099") and issued.changes["issued_by_token"]


def test_a_token_that_expires_never_mints_one_that_does_not(user: Any) -> None:
    parent, key = api_token_issue(user=user, name="short", expires_at=timezone.now() + timedelta(minutes=10))
    for body in ({"name": "forever"}, {"name": "forever2", "expires_at": None}):
        created = client(key).post("/api/v1/tokens/", body, format="json")
        assert created.status_code == 201 and created.json()["expiry_capped"] is True
        assert ApiToken.objects.get(name=body["name"]).expires_at == parent.expires_at


def test_a_sooner_expiry_is_kept_and_not_called_capped(user: Any) -> None:
    _, key = api_token_issue(user=user, name="day", expires_at=timezone.now() + timedelta(days=1))
    soon = timezone.now() + timedelta(hours=1)
    created = client(key).post(
        "/api/v1/tokens/", {"name": "hour", "expires_at": soon.isoformat()}, format="json"
    )
    assert created.status_code == 201 and created.json()["expiry_capped"] is False
    assert ApiToken.objects.get(name="hour").expires_at == soon


def test_without_a_parent_token_the_expiry_asked_for_is_kept(client: Any, user: Any, api: APIClient) -> None:
    """A signed-in person (the page, or the API with a session) and a token without expiry are
    not capped."""
    created = api.post(
        "/api/v1/tokens/", {"name": "far", "expires_at": "2099-01-01T00:00:00Z"}, format="json"
    )
    assert created.status_code == 201 and created.json()["expiry_capped"] is False
    assert ApiToken.objects.get(name="far").expires_at.year == 2099
    assert api.post("/api/v1/tokens/", {"name": "never"}, format="json").json()["expires_at"] is None
    client.force_login(user)
    session = client.post(
        "/api/v1/tokens/",
        {"name": "s", "expires_at": "2099-01-01T00:00:00Z"},
        content_type="application/json",
    )
    assert session.status_code == 201 and session.json()["expiry_capped"] is False


@pytest.mark.parametrize(
    ("parent", "child"),
    [
        (["domain.view"], []),  # none listed: all the user's permissions
        (["domain.view"], ["domain.view", "domain.power"]),
        (["domain.view"], ["domain.power"]),
    ],
)
def test_a_token_never_mints_one_with_more_permissions(
    user: Any, parent: list[str], child: list[str]
) -> None:
    _, key = api_token_issue(user=user, name="parent", permissions=parent)
    refused = client(key).post("/api/v1/tokens/", {"name": "child", "permissions": child}, format="json")
    assert refused.status_code == 403, refused.content
    assert refused.json()["error"] == "forbidden" and "domain.view" in refused.json()["detail"]
    assert not ApiToken.objects.filter(name="child").exists()


def test_a_token_mints_one_with_the_same_or_fewer_permissions(user: Any) -> None:
    _, key = api_token_issue(user=user, name="parent", permissions=["domain.view", "domain.power"])
    for name, permissions in (("same", ["domain.power", "domain.view"]), ("fewer", ["domain.view"])):
        created = client(key).post(
            "/api/v1/tokens/", {"name": name, "permissions": permissions}, format="json"
        )
        assert created.status_code == 201, created.content
        assert ApiToken.objects.get(name=name).permissions == sorted(permissions)


def test_the_service_holds_a_child_to_its_parent(user: Any) -> None:
    """Whoever calls api_token_issue with a parent (not only the API view) gets the same limits."""
    from console.errors import PermissionDenied

    parent, _ = api_token_issue(
        user=user,
        name="p",
        read_only=True,
        permissions=["domain.view"],
        expires_at=timezone.now() + timedelta(hours=1),
    )
    with pytest.raises(PermissionDenied):
        api_token_issue(user=user, name="c", permissions=["domain.view"], parent=parent)  # not read-only
    with pytest.raises(PermissionDenied):
        api_token_issue(user=user, name="c", read_only=True, parent=parent)  # all permissions
    child, _ = api_token_issue(
        user=user, name="c", read_only=True, permissions=["domain.view"], parent=parent
    )
    assert child.expires_at == parent.expires_at
