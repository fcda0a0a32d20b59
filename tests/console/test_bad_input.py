"""Input no database column holds, or of the wrong type, is a 4xx in the API's error shape
(console.errors: {"error", "detail", "fields"}), never a 500 (issue 18, point 8)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.access.models import ApiToken, Team
from console.params import MAX_ID
from domains.models import Domain
from hosts.models import Host

pytestmark = pytest.mark.django_db

HUGE = str(10**20)  # more than any 64-bit id
ENDLESS = "9" * 5000  # more digits than int() reads by default (4300)
LISTS = [
    "/api/v1/hosts/",
    "/api/v1/domains/",
    "/api/v1/jobs/",
    "/api/v1/tokens/",
    "/api/v1/teams/",
    "/api/v1/roles/",
    "/api/v1/grants/",
    "/api/v1/audit/",
]


def refused(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] and body["detail"], body
    if field is not None:
        assert field in body["fields"], body
    return body


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize("limit", [HUGE, ENDLESS])
def test_a_huge_limit_is_served_as_the_largest_page(api: APIClient, host: Host, url: str, limit: str) -> None:
    response = api.get(url, {"limit": limit, "offset": "1"})
    assert response.status_code == 200, response.content
    assert response.json()["previous"].endswith("?limit=500")  # the page it was served


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "-1"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"offset": ENDLESS}, "offset"),
        ({"offset": str(MAX_ID + 1)}, "offset"),
        ({"offset": "x"}, "offset"),
    ],
)
def test_a_limit_or_offset_that_is_no_number_of_rows_is_a_400(
    api: APIClient, url: str, params: dict[str, str], field: str
) -> None:
    refused(api.get(url, params), 400, field)


def test_a_huge_offset_is_an_empty_page(api: APIClient, host: Host) -> None:
    response = api.get("/api/v1/hosts/", {"offset": str(MAX_ID)})
    assert response.status_code == 200 and response.json()["results"] == []


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/domains/", "team"),
        ("/api/v1/domains/", "host"),
        ("/api/v1/jobs/", "domain"),
        ("/api/v1/jobs/", "host"),
    ],
)
@pytest.mark.parametrize("value", [HUGE, ENDLESS])
def test_a_huge_id_filter_is_a_400_naming_it(api: APIClient, url: str, field: str, value: str) -> None:
    body = refused(api.get(url, {field: value}), 400, field)
    assert "an id" in body["fields"][field][0]


@pytest.mark.parametrize("value", ["abc", HUGE, ENDLESS, "-1", "1.5"])
@pytest.mark.parametrize("kind", ["domain", "host", "team"])
def test_why_with_a_bad_id_is_a_400(api: APIClient, kind: str, value: str) -> None:
    refused(api.get("/api/v1/access/why/", {"action": "domain.view", kind: value}), 400, kind)


def test_why_with_an_unknown_id_is_a_404(api: APIClient) -> None:
    refused(api.get("/api/v1/access/why/", {"action": "domain.view", "domain": "12345"}), 404)


@pytest.mark.parametrize("scope", [["team"], {"team": 1}, 7, None, True])
def test_a_grant_with_a_scope_that_is_no_string_is_a_400(api: APIClient, scope: Any) -> None:
    body = {"user": "ana", "role": "Viewer", "scope": scope}
    refused(api.post("/api/v1/grants/", body, format="json"), 400, "scope")


@pytest.mark.parametrize("target", [10**30, -1, 0, "1", 1.0, True])
def test_a_grant_on_a_target_that_is_no_id_is_a_400(api: APIClient, target: Any) -> None:
    team = Team.objects.create(name="t")
    body = {"user": "ana", "role": "Viewer", "scope": "team", "team": target}
    refused(api.post("/api/v1/grants/", body, format="json"), 400, "team")
    assert team.pk is not None


@pytest.mark.parametrize("value", [10**30, 2**31, 1e30, -1, "5"])
def test_a_quota_no_column_holds_is_a_400(api: APIClient, value: Any) -> None:
    refused(api.post("/api/v1/teams/", {"name": "big", "max_vcpus": value}, format="json"), 400, "max_vcpus")
    assert not Team.objects.filter(name="big").exists()
    team = Team.objects.create(name="t")
    refused(
        api.patch(f"/api/v1/teams/{team.pk}/", {"max_disk_gib": value}, format="json"), 400, "max_disk_gib"
    )
    team.refresh_from_db()
    assert team.max_disk_gib is None


def test_the_largest_quota_is_kept(api: APIClient) -> None:
    created = api.post("/api/v1/teams/", {"name": "big", "max_vcpus": 2**31 - 1}, format="json")
    assert created.status_code == 201 and created.json()["max_vcpus"] == 2**31 - 1


@pytest.mark.parametrize("days", ["99999999999", ENDLESS, "0", "-3", "1.5", "soon"])
def test_the_tokens_page_refuses_an_expiry_no_date_holds(client: Any, user: Any, days: str) -> None:
    client.force_login(user)
    response = client.post("/account/tokens/", {"name": "long", "expires_days": days})
    assert response.status_code == 400
    assert "expires_days" in response.content.decode()
    assert not ApiToken.objects.filter(name="long").exists()


def test_the_tokens_page_takes_the_longest_expiry(client: Any, user: Any) -> None:
    client.force_login(user)
    assert client.post("/account/tokens/", {"name": "long", "expires_days": "36500"}).status_code == 200
    assert ApiToken.objects.get(name="long").expires_at is not None


@pytest.mark.parametrize(
    "url",
    [
        f"/?team={HUGE}",
        f"/?host={HUGE}",
        f"/?page={ENDLESS}",
        f"/jobs/?domain={HUGE}",
        f"/jobs/?host={ENDLESS}",
    ],
)
def test_pages_name_a_huge_id_rather_than_fail(client: Any, user: Any, url: str) -> None:
    client.force_login(user)
    response = client.get(url)
    assert response.status_code in (200, 400), response.status_code
    assert "an id" in response.content.decode() or "page number" in response.content.decode()


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/teams/999/",
        "/api/v1/roles/999/",
        "/api/v1/grants/999/",
        "/api/v1/tokens/999/",
        "/api/v1/hosts/999/",
        "/api/v1/jobs/999/",
        "/api/v1/audit/999/",
        f"/api/v1/teams/{HUGE}/",
        "/api/v1/teams/abc/",
    ],
)
def test_an_unknown_id_is_a_404_in_the_error_shape(api: APIClient, url: str) -> None:
    assert refused(api.get(url), 404)["error"] == "not_found"


def test_drf_refusals_have_the_error_shape(api: APIClient) -> None:
    body = refused(api.post("/api/v1/tokens/", {"name": ""}, format="json"), 400, "name")
    assert body["error"] == "invalid"
    nested = refused(
        api.post("/api/v1/domains/1/autostart/", {"enabled": "maybe"}, format="json"), 404
    )  # no such domain: the id is looked at first
    assert nested["error"] == "not_found"
    malformed = api.generic("POST", "/api/v1/tokens/", "{not json", content_type="application/json")
    assert refused(malformed, 400)["error"] == "parse_error"
    unauthenticated = APIClient().get("/api/v1/domains/")
    assert refused(unauthenticated, 401)["error"] == "not_authenticated"
    assert refused(api.put("/api/v1/teams/"), 405)["error"] == "method_not_allowed"
    nested = refused(api.post("/api/v1/tokens/", {"name": "x", "permissions": ["a", {}]}, format="json"), 400)
    assert list(nested["fields"]) == ["permissions.1"] and "permissions.1" in nested["detail"]
    whole = refused(api.post("/api/v1/tokens/", ["ci"], format="json"), 400)  # not an object
    assert list(whole["fields"]) == ["non_field_errors"]
    assert whole["detail"] == whole["fields"]["non_field_errors"][0]


def test_a_read_only_tokens_refusal_has_the_error_shape(user: Any) -> None:
    from console.access.services import api_token_issue

    _, key = api_token_issue(user=user, read_only=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert refused(client.post("/api/v1/tokens/", {"name": "x"}, format="json"), 403)["error"] == "forbidden"


def test_domains_of_a_team_use_the_error_shape_for_a_bad_body(api: APIClient, host: Host) -> None:
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF)
    body = refused(
        api.post(f"/api/v1/domains/{domain.pk}/autostart/", {"enabled": "maybe"}, format="json"), 400
    )
    assert body["fields"] == {"enabled": ["Must be a valid boolean."]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "r", "permissions": [None, None]}, "permissions"),  # found by test_api_fuzz
        ({"name": "r", "permissions": [["domain.view"]]}, "permissions"),
        ({"name": ["r"], "permissions": ["domain.view"]}, "name"),
        ({"name": "r", "permissions": ["domain.view"], "description": 5}, "description"),
        ({"name": "r", "permissions": ["domain.view"], "description": "x" * 256}, "description"),
    ],
)
def test_a_role_of_the_wrong_types_is_a_400(api: APIClient, body: dict[str, Any], field: str) -> None:
    refused(api.post("/api/v1/roles/", body, format="json"), 400, field)
