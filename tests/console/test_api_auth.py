from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from console.access.models import ApiToken
from console.access.services import api_token_issue

pytestmark = pytest.mark.django_db

ENDPOINTS = ["/api/v1/hosts/", "/api/v1/domains/", "/api/v1/jobs/"]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_without_token_is_refused(url: str) -> None:
    response = APIClient().get(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("url", ENDPOINTS)
def test_with_wrong_token_is_refused(url: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-key")
    assert client.get(url).status_code == 401


def test_revoked_token_is_refused(user: Any) -> None:
    token, key = api_token_issue(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/hosts/").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert client.get("/api/v1/hosts/").status_code == 401


def test_token_of_inactive_user_is_refused(user: Any) -> None:
    _, key = api_token_issue(user=user)
    user.is_active = False
    user.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/hosts/").status_code == 401


def test_token_is_stored_hashed_and_records_use(user: Any) -> None:
    token, key = api_token_issue(user=user)
    assert key not in token.key_hash
    assert not ApiToken.objects.filter(key_hash=key).exists()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    client.get("/api/v1/hosts/")
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_issue_token_command_prints_a_working_key(user: Any, capsys: Any) -> None:
    from django.core.management import call_command

    call_command("issue_token", user.username)
    key = capsys.readouterr().out.strip()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/domains/").status_code == 200


def test_pages_require_login(client: Any) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_openapi_schema_is_served(api: APIClient) -> None:
    response = api.get("/api/v1/schema/")
    assert response.status_code == 200
    assert b"/api/v1/domains/{id}/console-tickets/" in response.content


@pytest.mark.parametrize("url", ["/api/v1/schema/", "/api/v1/docs/"])
def test_api_description_is_for_signed_in_users(url: str) -> None:
    assert APIClient().get(url).status_code in (401, 403)


@pytest.mark.parametrize("url", ["/", "/hosts/", "/domains/new/", "/domains/1/"])
def test_every_page_requires_login(client: Any, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
