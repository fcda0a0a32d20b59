"""One team can no longer reach another's disks by path (issue 18, point 1): every path a spec
carries is checked against whose volume it is (domains.volumes), in the API, the wizard and a
retried create; a delete with its disks keeps what is not the domain's; other teams' volumes
and domains are not shown on a shared host."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.access.models import Membership, Team
from console.access.services import api_token_issue
from domains import volumes
from domains.models import Domain, Volume
from domains.services import domain_observe
from hosts.models import Host
from tests.conftest import builtin_role, host_facts

pytestmark = pytest.mark.django_db
POOL = "/var/lib/libvirt/images"
THEIRS = f"{POOL}/theirs-disk0.qcow2"
MINE = f"{POOL}/mine-data.qcow2"
SITE_ISO = f"{POOL}/debian.iso"


@pytest.fixture
def shared_host(db: None) -> Host:
    pool = {
        "name": "default",
        "type": "dir",
        "active": True,
        "path": POOL,
        "capacity_bytes": 100 << 30,
        "allocation_bytes": 0,
        "available_bytes": 100 << 30,
        "volumes": [
            {"name": "debian.iso", "path": SITE_ISO, "kind": "iso"},
            {"name": "theirs-base.qcow2", "path": f"{POOL}/theirs-base.qcow2", "kind": "image"},
        ],
    }
    resources = {"pools": [pool], "networks": [], "bridges": []}
    return Host.objects.create(
        name="shared",
        url="http://127.0.0.1:1",
        secret="x" * 32,
        state=Host.State.ONLINE,
        facts=host_facts(resources=resources),
    )


def _member(django_user_model: Any, name: str, team: Team, role: str = "Admin") -> APIClient:
    user = django_user_model.objects.create_user(name, password="x-pass-1234")
    Membership.objects.create(user=user, team=team, role=builtin_role(role))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user)[1]}")
    return api


@pytest.fixture
def teams(django_user_model: Any, shared_host: Host) -> dict[str, Any]:
    red, blue = Team.objects.create(name="red"), Team.objects.create(name="blue")
    # Blue's domain, as its host reported it: its disk is blue's from then on.
    theirs = Domain.objects.create(name="theirs", host=shared_host, team=blue, spec={"name": "theirs"})
    theirs.disks = [{"target": "vda", "device": "disk", "path": THEIRS}]
    theirs.save()
    volumes.register_disks([theirs])
    Volume.objects.create(host=shared_host, path=f"{POOL}/theirs-base.qcow2", team=blue)
    return {
        "red": red,
        "blue": blue,
        "red_api": _member(django_user_model, "rita", red),
        "blue_api": _member(django_user_model, "bob", blue),
        "theirs": theirs,
    }


def create(api: APIClient, host: Host, name: str, **spec: Any) -> Any:
    body = {"name": name, "host": host.pk, "boot": {"kind": "iso", "iso": SITE_ISO}, **spec}
    return api.post("/api/v1/domains/", body, format="json")


BLUE_BASE = f"{POOL}/theirs-base.qcow2"
NOT_YOURS = "is not a volume your team may use"


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (
            {"disks": [{"existing": THEIRS}]},
            "disks.0.existing",
            f"{THEIRS} is a disk of another domain: a volume a domain writes is used by that domain only",
        ),
        ({"disks": [{"size_gib": 1, "backing": BLUE_BASE}]}, "disks.0.backing", f"{BLUE_BASE} {NOT_YOURS}"),
        ({"boot": {"kind": "iso", "iso": BLUE_BASE}}, "boot.iso", f"{BLUE_BASE} {NOT_YOURS}"),
        ({"boot": {"kind": "kernel", "kernel": BLUE_BASE}}, "boot.kernel", f"{BLUE_BASE} {NOT_YOURS}"),
        (
            {"boot": {"kind": "kernel", "kernel": "vmlinuz", "initrd": BLUE_BASE}},
            "boot.initrd",
            f"{BLUE_BASE} {NOT_YOURS}",
        ),
    ],
)
def test_no_path_of_a_spec_reaches_another_team_s_volume(
    teams: dict[str, Any], shared_host: Host, spec: dict[str, Any], field: str, message: str
) -> None:
    response = create(teams["red_api"], shared_host, "grab", **spec)
    assert response.status_code == 400, response.content
    assert response.json()["fields"][field] == [message]
    assert not Domain.objects.filter(name="grab").exists()
    # The same spec is the owner's to use (the disk is free once its domain is gone).
    teams["theirs"].delete()
    assert create(teams["blue_api"], shared_host, "own", **spec).status_code == 202


def test_another_team_s_disk_is_refused_without_naming_its_domain(
    teams: dict[str, Any], shared_host: Host
) -> None:
    response = create(teams["red_api"], shared_host, "grab", disks=[{"existing": THEIRS}])
    (message,) = response.json()["fields"]["disks.0.existing"]
    assert (
        message
        == f"{THEIRS} is a disk of another domain: a volume a domain writes is used by that domain only"
    )
    assert "theirs" not in message.replace(THEIRS, "")


def test_a_team_uses_its_own_unused_volume_and_the_site_s_media(
    teams: dict[str, Any], shared_host: Host
) -> None:
    Volume.objects.create(host=shared_host, path=MINE, team=teams["red"])
    response = create(teams["red_api"], shared_host, "mine", disks=[{"existing": MINE}])
    assert response.status_code == 202, response.content  # its own; the site's ISO read-only
    # ... but not twice: a volume a domain writes is that domain's only
    again = create(teams["red_api"], shared_host, "mine2", disks=[{"existing": MINE}])
    assert again.status_code == 400
    assert again.json()["fields"]["disks.0.existing"] == [
        f"{MINE} is a disk of mine: a volume a domain writes is used by that domain only"
    ]


def test_a_file_no_domain_used_is_the_site_s_read_only_media(
    teams: dict[str, Any], shared_host: Host, api: APIClient
) -> None:
    """A team reads it (an ISO, a base image) but does not write it; those who manage the host
    (the `api` fixture is a site Owner) attach it as a disk."""
    loose = f"{POOL}/loose.img"
    as_disk = create(teams["red_api"], shared_host, "a", disks=[{"existing": loose}])
    assert as_disk.status_code == 400
    assert "only those who manage the host" in as_disk.json()["fields"]["disks.0.existing"][0]
    as_base = create(teams["red_api"], shared_host, "b", disks=[{"size_gib": 1, "backing": loose}])
    assert as_base.status_code == 202, as_base.content
    assert create(api, shared_host, "c", disks=[{"existing": f"{POOL}/other-loose.img"}]).status_code == 202


def test_the_library_is_read_only(teams: dict[str, Any], shared_host: Host) -> None:
    Volume.objects.create(host=shared_host, path=f"{POOL}/golden.qcow2", library=True)
    ok = create(
        teams["red_api"], shared_host, "a", disks=[{"size_gib": 1, "backing": f"{POOL}/golden.qcow2"}]
    )
    assert ok.status_code == 202, ok.content
    refused = create(teams["red_api"], shared_host, "b", disks=[{"existing": f"{POOL}/golden.qcow2"}])
    assert refused.json()["fields"]["disks.0.existing"] == [
        f"{POOL}/golden.qcow2 is in the site's library, which is read-only"
    ]


def test_a_relative_path_is_checked_where_the_agent_finds_it(
    teams: dict[str, Any], shared_host: Host
) -> None:
    response = create(teams["red_api"], shared_host, "grab", disks=[{"existing": "theirs-disk0.qcow2"}])
    assert response.status_code == 400 and "is a disk of another domain" in str(response.json())


def test_the_wizard_checks_the_paths_at_their_step(
    teams: dict[str, Any], shared_host: Host, client: Any, django_user_model: Any
) -> None:
    client.force_login(django_user_model.objects.get(username="rita"))
    body = {
        "step": 5,
        "name": "grab",
        "host": shared_host.pk,
        "team": teams["red"].pk,
        "boot": {"kind": "iso", "iso": SITE_ISO},
        "disks": [{"existing": THEIRS}],
    }
    answer = client.post("/domains/new/check/", body, content_type="application/json").json()
    assert answer["ok"] is False and "disks.0.existing" in answer["errors"]


def test_a_retried_create_is_checked_again(teams: dict[str, Any], shared_host: Host) -> None:
    """A create that failed before the volume was someone else's is not retried onto it."""
    Volume.objects.create(host=shared_host, path=MINE, team=teams["red"])
    assert create(teams["red_api"], shared_host, "mine", disks=[{"existing": MINE}]).status_code == 202
    domain = Domain.objects.get(name="mine")
    Domain.objects.filter(pk=domain.pk).update(state=Domain.State.FAILED)
    Volume.objects.filter(path=MINE).update(team=teams["blue"])  # handed to blue meanwhile
    retried = teams["red_api"].post(f"/api/v1/domains/{domain.pk}/retry-create/")
    assert retried.status_code == 400
    assert retried.json()["fields"]["disks.0.existing"] == [f"{MINE} is not a volume your team may use"]


def test_a_delete_with_disks_keeps_what_is_not_the_domain_s(teams: dict[str, Any], shared_host: Host) -> None:
    """Even a domain that got another team's disk before this check existed: its delete with
    disks names that disk to the agent as one to keep."""
    red_domain = Domain.objects.create(name="old", host=shared_host, team=teams["red"], spec={"name": "old"})
    red_domain.disks = [
        {"target": "vda", "device": "disk", "path": f"{POOL}/old-disk0.qcow2"},
        {"target": "vdb", "device": "disk", "path": f"{POOL}/blue-data.qcow2"},
        {"target": "hdc", "device": "cdrom", "path": SITE_ISO},
    ]
    Volume.objects.create(host=shared_host, path=f"{POOL}/blue-data.qcow2", team=teams["blue"])
    volumes.register_disks([red_domain])
    assert volumes.kept_on_delete(red_domain) == {f"{POOL}/blue-data.qcow2": "it belongs to another team"}
    shared = Domain.objects.create(name="too", host=shared_host, team=teams["red"], spec={"name": "too"})
    shared.disks = [{"target": "vda", "device": "disk", "path": f"{POOL}/old-disk0.qcow2"}]
    shared.save()
    assert volumes.kept_on_delete(red_domain) == {
        f"{POOL}/old-disk0.qcow2": "another domain uses it too",
        f"{POOL}/blue-data.qcow2": "it belongs to another team",
    }
    Volume.objects.filter(path=f"{POOL}/blue-data.qcow2").update(library=True)
    assert volumes.kept_on_delete(red_domain)[f"{POOL}/blue-data.qcow2"] == "it is in the site's library"


def test_disks_a_host_reports_become_their_domain_s_team_s(teams: dict[str, Any], shared_host: Host) -> None:
    from agent.protocol import DiskInfo, DomainInfo

    domain = Domain.objects.create(name="new", host=shared_host, team=teams["red"], spec={"name": "new"})
    info = DomainInfo(
        uuid=domain.uuid,
        name="new",
        state="shutoff",
        vcpus=1,
        memory_mib=256,
        disks=[DiskInfo(target="vda", device="disk", path=f"{POOL}/new-disk0.qcow2")],
    )
    domain_observe(host=shared_host, info=info)
    volume = Volume.objects.get(path=f"{POOL}/new-disk0.qcow2")
    assert (volume.team, volume.domain) == (teams["red"], domain)


def test_a_shared_host_shows_a_team_neither_the_volumes_nor_the_domains_of_others(
    teams: dict[str, Any], shared_host: Host, client: Any, django_user_model: Any
) -> None:
    listed = teams["red_api"].get(f"/api/v1/hosts/{shared_host.pk}/").json()
    paths = {v["path"] for pool in listed["resources"]["pools"] for v in pool["volumes"]}
    assert paths == {SITE_ISO}  # not blue's base image
    assert f"{POOL}/theirs-base.qcow2" not in str(listed)
    mine = teams["blue_api"].get(f"/api/v1/hosts/{shared_host.pk}/").json()
    assert f"{POOL}/theirs-base.qcow2" in {
        v["path"] for p in mine["resources"]["pools"] for v in p["volumes"]
    }

    client.force_login(django_user_model.objects.get(username="rita"))
    page = client.get(f"/hosts/{shared_host.pk}/").content.decode()
    assert "theirs-base" not in page
    assert "<dd>0 <span" in page  # blue's domain is not counted
    wizard = client.get("/domains/new/").content.decode()
    assert "theirs-base" not in wizard and "debian.iso" in wizard


def test_the_wizard_offers_no_image_another_domain_writes(
    teams: dict[str, Any], shared_host: Host, client: Any, django_user_model: Any
) -> None:
    """Even to the team that owns it: a disk another domain writes is that domain's alone (the
    server refuses it as an existing disk or a base image: a test above)."""
    theirs = teams["theirs"]
    theirs.disks = [{"target": "vda", "device": "disk", "path": f"{POOL}/theirs-base.qcow2"}]
    theirs.save()
    client.force_login(django_user_model.objects.get(username="bob"))
    wizard = client.get("/domains/new/").content.decode()
    assert "theirs-base" not in wizard and "debian.iso" in wizard
    theirs.disks = []
    theirs.save()
    assert "theirs-base" in client.get("/domains/new/").content.decode()  # free again: offered
