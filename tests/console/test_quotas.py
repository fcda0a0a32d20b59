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
