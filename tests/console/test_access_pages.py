from __future__ import annotations

from typing import Any

import pytest

from console.access.models import ApiToken, Membership, Team
from tests.conftest import builtin_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def test_issue_a_token_on_the_page_shows_the_key_once(browser: Any) -> None:
    page = browser.post(
        "/account/tokens/",
        {"name": "ci", "expires_days": "7", "read_only": "on", "permissions": ["domain.view"]},
    ).content.decode()
    token = ApiToken.objects.get(name="ci")
    assert 'id="new-key"' in page and token.prefix in page
    assert token.read_only and token.permissions == ["domain.view"] and token.expires_at is not None
    again = browser.get("/account/tokens/").content.decode()
    assert 'id="new-key"' not in again and "ci" in again


def test_revoke_on_the_page(browser: Any, user: Any) -> None:
    browser.post("/account/tokens/", {"name": "old"})
    token = ApiToken.objects.get(name="old")
    browser.post(f"/account/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_another_users_token_cannot_be_revoked_from_the_page(
    client: Any, django_user_model: Any, user: Any
) -> None:
    from console.access.services import api_token_issue

    theirs, _ = api_token_issue(user=user, name="ana's")
    bob = django_user_model.objects.create_user("bob", password="x-pass-1234")
    client.force_login(bob)
    client.post(f"/account/tokens/{theirs.pk}/revoke/")
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_teams_page_shows_only_ones_teams_with_usage(client: Any, django_user_model: Any) -> None:
    mine = Team.objects.create(name="mine", max_vcpus=8)
    Team.objects.create(name="theirs")
    bob = django_user_model.objects.create_user("bob", password="x-pass-1234")
    Membership.objects.create(user=bob, team=mine, role=builtin_role("Viewer"))
    client.force_login(bob)
    page = client.get("/teams/").content.decode()
    assert "mine" in page and "theirs" not in page and "bob" in page
