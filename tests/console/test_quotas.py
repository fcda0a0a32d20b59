from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.access.models import Membership, Team
from console.access.services import api_token_issue
from domains.models import Domain
from hosts.models import Host
from tests.conftest import builtin_role

pytestmark = pytest.mark.django_db
ISO = {"iso": "/var/lib/libvirt/images/x.iso"}


@pytest.fixture
def team_api(django_user_model: Any) -> tuple[Team, APIClient]:
    team = Team.objects.create(name="blue", max_domains=2, max_vcpus=4, max_memory_mib=1024, max_disk_gib=10)
    user = django_user_model.objects.create_user("tess", password="x-pass-1234")
    Membership.objects.create(user=user, team=team, role=builtin_role("Admin"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user)[1]}")
    return team, api


def create(api: APIClient, host: Host, name: str, **spec: Any) -> Any:
    return api.post("/api/v1/domains/", {"name": name, "host": host.pk, "boot": ISO, **spec}, format="json")


def test_exactly_at_the_quota_is_allowed(team_api: tuple[Team, APIClient], host: Host) -> None:
    team, api = team_api
    assert create(api, host, "a", vcpus=2, memory_mib=512, disks=[{"size_gib": 5}]).status_code == 202
    assert create(api, host, "b", vcpus=2, memory_mib=512, disks=[{"size_gib": 5}]).status_code == 202
    assert Domain.objects.filter(team=team).count() == 2  # the team was implied: tess's only team


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"vcpus": 3}, "vcpus", "4 vCPUs"),
        ({"memory_mib": 769}, "memory_mib", "1024 MiB"),
        ({"disks": [{"size_gib": 5.5}]}, "disks", "10 GiB"),
    ],
)
def test_one_over_is_refused_naming_the_quota(
    team_api: tuple[Team, APIClient], host: Host, spec: dict[str, Any], field: str, words: str
) -> None:
    _, api = team_api
    assert create(api, host, "a", vcpus=2, memory_mib=256, disks=[{"size_gib": 5}]).status_code == 202
    response = create(api, host, "b", **{"vcpus": 1, "memory_mib": 256, **spec})
    assert response.status_code == 400, response.content
    message = response.json()["fields"][field][0]
    assert "blue" in message and words in message
    assert not Domain.objects.filter(name="b").exists()


def test_domain_count_quota(team_api: tuple[Team, APIClient], host: Host) -> None:
    _, api = team_api
    for name in ("a", "b"):
        assert create(api, host, name, vcpus=1, memory_mib=64).status_code == 202
    response = create(api, host, "c", vcpus=1, memory_mib=64)
    assert response.status_code == 400 and "2 domains" in response.json()["fields"]["name"][0]


def test_a_host_reserved_to_another_team_is_refused(team_api: tuple[Team, APIClient], host: Host) -> None:
    _, api = team_api
    host.teams.add(Team.objects.create(name="red"))
    response = create(api, host, "a")
    assert response.status_code == 400
    assert "host" in response.json()["fields"]  # not even visible to the blue team
    assert not Domain.objects.exists()


EXISTING = f"{ISO['iso'].rsplit('/', 1)[0]}/data.qcow2"


def test_a_domain_on_an_existing_volume_counts_as_a_disk_of_unknown_size(
    team_api: tuple[Team, APIClient], host: Host, client: Any
) -> None:
    """Issue 18: its spec's `size_gib: null` made every use of the team's usage raise TypeError
    (the teams list and page, adding members, every create in the team)."""
    team, api = team_api
    disks = [{"existing": EXISTING, "size_gib": None, "format": "qcow2"}, {"size_gib": 4, "existing": None}]
    Domain.objects.create(name="a", host=host, team=team, vcpus=1, memory_mib=256, spec={"disks": disks})

    listed = api.get("/api/v1/teams/")
    assert listed.status_code == 200, listed.content
    usage = listed.json()["results"][0]["usage"]
    assert usage["disk_gib"] == 4.0 and usage["disks_of_unknown_size"] == 1

    tess = Membership.objects.get(team=team).user
    client.force_login(tess)
    page = client.get("/teams/")
    assert page.status_code == 200 and "1 existing disk of unknown size" in page.content.decode()

    Membership.objects.create(
        user=type(tess).objects.create_user("new"), team=team, role=builtin_role("Viewer")
    )
    added = api.post(f"/api/v1/teams/{team.pk}/members/", {"user": "new", "role": "Operator"}, format="json")
    assert added.status_code == 201, added.content
    # creates in the team work again, and the quota counts what it knows: 4 GiB used of 10
    assert create(api, host, "b", vcpus=1, memory_mib=256, disks=[{"size_gib": 6}]).status_code == 202
    over = create(api, host, "c", vcpus=1, memory_mib=64, disks=[{"size_gib": 0.5}])
    assert over.status_code == 400 and "10 GiB" in over.json()["fields"]["disks"][0]


def test_a_domain_found_on_its_host_counts_its_disks_as_unknown(
    team_api: tuple[Team, APIClient], host: Host
) -> None:
    team, api = team_api
    reported = [
        {"target": "vda", "device": "disk", "path": "/var/lib/libvirt/images/f.qcow2"},
        {"target": "sda", "device": "cdrom", "path": "/var/lib/libvirt/images/x.iso"},
    ]
    Domain.objects.create(name="found", host=host, team=team, spec={}, disks=reported)
    usage = api.get(f"/api/v1/teams/{team.pk}/").json()["usage"]
    assert usage["disk_gib"] == 0 and usage["disks_of_unknown_size"] == 1
