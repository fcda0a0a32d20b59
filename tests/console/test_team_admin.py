from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from console.access.models import Grant, Membership, Team
from console.access.services import api_token_issue
from domains.models import Domain
from hosts.models import Host
from tests.conftest import builtin_role

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user)[1]}")
    return c


def member(name: str, team: Team, role: str) -> Any:
    user = get_user_model().objects.create_user(name, password="x-pass-1234")
    Membership.objects.create(user=user, team=team, role=builtin_role(role))
    return user


@pytest.fixture
def teams() -> tuple[Team, Team]:
    return Team.objects.create(name="A"), Team.objects.create(name="B")


def test_site_admin_creates_a_team_with_quotas_and_sees_usage(api: APIClient, host: Host) -> None:
    created = api.post("/api/v1/teams/", {"name": "ops", "max_vcpus": 8, "max_domains": 3}, format="json")
    assert created.status_code == 201, created.content
    team = Team.objects.get(name="ops")
    Domain.objects.create(
        name="d", host=host, team=team, vcpus=2, memory_mib=512, spec={"disks": [{"size_gib": 4}]}
    )
    data = api.get(f"/api/v1/teams/{team.pk}/").json()
    assert data["max_vcpus"] == 8
    assert data["usage"] == {
        "domains": 1,
        "vcpus": 2,
        "memory_mib": 512,
        "disk_gib": 4.0,
        "disks_of_unknown_size": 0,
    }


def test_team_admin_manages_members_without_escalating(teams: tuple[Team, Team]) -> None:
    a, _ = teams
    admin = client_for(member("adm", a, "Admin"))
    get_user_model().objects.create_user("new", password="x-pass-1234")
    assert (
        admin.post(
            f"/api/v1/teams/{a.pk}/members/", {"user": "new", "role": "Operator"}, format="json"
        ).status_code
        == 201
    )
    assert (
        admin.post(
            f"/api/v1/teams/{a.pk}/members/", {"user": "new", "role": "Admin"}, format="json"
        ).status_code
        == 201
    )
    assert Membership.objects.get(team=a, user__username="new").role.name == "Admin"
    assert admin.delete(f"/api/v1/teams/{a.pk}/members/new/").status_code == 200
    assert not Membership.objects.filter(team=a, user__username="new").exists()


def test_a_team_admin_cannot_touch_another_team(teams: tuple[Team, Team]) -> None:
    a, b = teams
    admin = client_for(member("adm", a, "Admin"))
    get_user_model().objects.create_user("new", password="x-pass-1234")
    assert admin.get(f"/api/v1/teams/{b.pk}/").status_code == 404
    assert (
        admin.post(
            f"/api/v1/teams/{b.pk}/members/", {"user": "new", "role": "Viewer"}, format="json"
        ).status_code
        == 404
    )
    assert not Membership.objects.filter(team=b).exists()


def test_an_operator_cannot_manage_members_and_is_told_why(teams: tuple[Team, Team]) -> None:
    a, _ = teams
    operator = client_for(member("op", a, "Operator"))
    refused = operator.post(f"/api/v1/teams/{a.pk}/members/", {"user": "op", "role": "Admin"}, format="json")
    assert refused.status_code == 403 and "team.manage" in refused.json()["detail"]


def test_quotas_are_the_sites_to_set(teams: tuple[Team, Team], api: APIClient) -> None:
    a, _ = teams
    admin = client_for(member("adm", a, "Admin"))
    assert admin.patch(f"/api/v1/teams/{a.pk}/", {"max_vcpus": 999}, format="json").status_code == 403
    assert api.patch(f"/api/v1/teams/{a.pk}/", {"max_vcpus": 16}, format="json").status_code == 200
    assert api.patch(f"/api/v1/teams/{a.pk}/", {"max_vcpus": -1}, format="json").status_code == 400
    a.refresh_from_db()
    assert a.max_vcpus == 16


def test_grants_on_a_teams_domain_but_not_on_hosts(teams: tuple[Team, Team], host: Host) -> None:
    a, _ = teams
    admin = client_for(member("adm", a, "Admin"))
    bob = get_user_model().objects.create_user("bob", password="x-pass-1234")
    domain = Domain.objects.create(name="d", host=host, team=a, state=Domain.State.RUNNING)
    ok = admin.post(
        "/api/v1/grants/",
        {"user": "bob", "role": "Operator", "scope": "domain", "domain": domain.pk},
        format="json",
    )
    assert ok.status_code == 201, ok.content
    assert client_for(bob).post(f"/api/v1/domains/{domain.pk}/start/").status_code == 202
    refused = admin.post(
        "/api/v1/grants/", {"user": "bob", "role": "Viewer", "scope": "host", "host": host.pk}, format="json"
    )
    assert refused.status_code == 403
    site = admin.post("/api/v1/grants/", {"user": "bob", "role": "Viewer", "scope": "site"}, format="json")
    assert site.status_code == 403
    assert Grant.objects.filter(user=bob).count() == 1
    # revoking it takes effect at once
    assert admin.delete(f"/api/v1/grants/{ok.json()['id']}/").status_code == 204
    assert client_for(bob).post(f"/api/v1/domains/{domain.pk}/start/").status_code == 404


def test_custom_role(api: APIClient, host: Host) -> None:
    bad = api.post("/api/v1/roles/", {"name": "Flyer", "permissions": ["domain.fly"]}, format="json")
    assert bad.status_code == 400 and "permissions" in bad.json()["fields"]
    made = api.post(
        "/api/v1/roles/",
        {"name": "Power only", "permissions": ["domain.view", "domain.power"]},
        format="json",
    )
    assert made.status_code == 201
    carol = get_user_model().objects.create_user("carol", password="x-pass-1234")
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.RUNNING)
    assert (
        api.post(
            "/api/v1/grants/",
            {"user": "carol", "role": "Power only", "scope": "domain", "domain": domain.pk},
            format="json",
        ).status_code
        == 201
    )
    c = client_for(carol)
    assert c.post(f"/api/v1/domains/{domain.pk}/start/").status_code == 202
    assert (
        c.post(f"/api/v1/domains/{domain.pk}/console-tickets/", {"kind": "serial"}, format="json").status_code
        == 403
    )


def test_why_cant_i(teams: tuple[Team, Team], host: Host) -> None:
    a, _ = teams
    viewer = client_for(member("vi", a, "Viewer"))
    domain = Domain.objects.create(name="web", host=host, team=a)
    answer = viewer.get("/api/v1/access/why/", {"action": "domain.power", "domain": domain.pk}).json()
    assert answer["allowed"] is False
    assert "domain.power" in answer["reason"] and "'web'" in answer["reason"] and "'A'" in answer["reason"]
    assert (
        viewer.get("/api/v1/access/why/", {"action": "domain.view", "domain": domain.pk}).json()["allowed"]
        is True
    )
    assert viewer.get("/api/v1/access/why/", {"action": "domain.fly"}).status_code == 400


def test_no_escalation_from_a_narrower_scope(teams: tuple[Team, Team], host: Host) -> None:
    """An Admin of one domain may not hand out roles on its team, nor anyone the site."""
    a, _ = teams
    domain = Domain.objects.create(name="d", host=host, team=a)
    dadmin_user = get_user_model().objects.create_user("dadm", password="x-pass-1234")
    Grant.objects.create(user=dadmin_user, role=builtin_role("Admin"), scope="domain", domain=domain)
    dadmin = client_for(dadmin_user)
    get_user_model().objects.create_user("eve", password="x-pass-1234")
    on_team = dadmin.post(
        "/api/v1/grants/", {"user": "eve", "role": "Viewer", "scope": "team", "team": a.pk}, format="json"
    )
    assert on_team.status_code in (400, 403)  # the team is not even visible to a domain admin
    on_domain = dadmin.post(
        "/api/v1/grants/",
        {"user": "eve", "role": "Operator", "scope": "domain", "domain": domain.pk},
        format="json",
    )
    assert on_domain.status_code == 201
    as_owner = dadmin.post(
        "/api/v1/grants/",
        {"user": "eve", "role": "Owner", "scope": "domain", "domain": domain.pk},
        format="json",
    )
    assert as_owner.status_code == 201  # Owner on a domain confers no more than Admin there
    assert (
        client_for(get_user_model().objects.get(username="eve"))
        .post(
            "/api/v1/hosts/", {"name": "h9", "url": "http://127.0.0.1:9", "secret": "s" * 32}, format="json"
        )
        .status_code
        == 403
    )
