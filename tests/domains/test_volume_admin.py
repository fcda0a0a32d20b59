"""Those who manage a host say whose its volumes are (issue 18, point 1: "resolved to a volume
the caller may use: their team's, the site's shared library, or one granted"): through
/api/v1/volumes/ and the host's page they put a volume in the library, grant it to teams besides
its owner, or hand it to another team; what a create may name follows at once. Teams see their
own, granted and the site's volumes; a team's admin changes none of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from console.access.models import Grant, Membership, Role, Team
from console.access.services import api_token_issue
from console.audit.models import AuditEvent
from domains import volumes
from domains.models import Domain, Volume
from hosts.models import Host
from tests.conftest import builtin_role, grant, host_facts

pytestmark = pytest.mark.django_db
POOL = "/var/lib/libvirt/images"
SITE_ISO = f"{POOL}/debian.iso"
RED_DATA = f"{POOL}/red-data.qcow2"
BLUE_DATA = f"{POOL}/blue-data.qcow2"  # blue's, no domain uses it
BLUE_DISK = f"{POOL}/bluevm-disk0.qcow2"  # the disk of blue's domain bluevm
GRANTED = f"{POOL}/blue-shared.qcow2"  # blue's, granted to red, the disk of blue's sharer
LIBRARY = f"{POOL}/golden.qcow2"
SITE_DISK = f"{POOL}/found-disk0.qcow2"  # the disk of a domain no team owns
NOT_YOURS = "is not a volume your team may use"


@dataclass
class World:
    host: Host
    other: Host
    teams: dict[str, Team]
    apis: dict[str, APIClient]  # each team's Admin
    volumes: dict[str, Volume]


def _member(django_user_model: Any, name: str, team: Team) -> APIClient:
    user = django_user_model.objects.create_user(name, password="x-pass-1234")
    Membership.objects.create(user=user, team=team, role=builtin_role("Admin"))
    return _api(user)


def _api(user: Any) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user)[1]}")
    return api


def _domain(host: Host, name: str, team: Team | None, disk: str) -> Domain:
    domain = Domain.objects.create(name=name, host=host, team=team, spec={"name": name})
    domain.disks = [{"target": "vda", "device": "disk", "path": disk}]
    domain.save()
    volumes.register_disks([domain])
    return domain


@pytest.fixture
def world(db: None, django_user_model: Any) -> World:
    paths = [SITE_ISO, RED_DATA, BLUE_DATA, BLUE_DISK, GRANTED, LIBRARY, SITE_DISK]
    pool = {
        "name": "default",
        "type": "dir",
        "active": True,
        "path": POOL,
        "capacity_bytes": 100 << 30,
        "allocation_bytes": 0,
        "available_bytes": 100 << 30,
        "volumes": [{"name": p.rsplit("/", 1)[1], "path": p, "kind": "image"} for p in paths],
    }
    facts = host_facts(resources={"pools": [pool], "networks": [], "bridges": []})
    host = Host.objects.create(
        name="shared", url="http://127.0.0.1:1", secret="x" * 32, state=Host.State.ONLINE, facts=facts
    )
    other = Host.objects.create(
        name="other", url="http://127.0.0.1:2", secret="x" * 32, state=Host.State.ONLINE, facts=facts
    )
    teams = {n: Team.objects.create(name=n) for n in ("red", "blue", "green")}
    apis = {n: _member(django_user_model, f"{n}-admin", t) for n, t in teams.items()}
    _domain(host, "bluevm", teams["blue"], BLUE_DISK)
    _domain(host, "sharer", teams["blue"], GRANTED)
    _domain(host, "found", None, SITE_DISK)
    rows = {
        "red": Volume.objects.create(host=host, path=RED_DATA, team=teams["red"]),
        "blue": Volume.objects.create(host=host, path=BLUE_DATA, team=teams["blue"]),
        "bluevm": Volume.objects.get(path=BLUE_DISK),
        "granted": Volume.objects.get(path=GRANTED),
        "library": Volume.objects.create(host=host, path=LIBRARY, library=True),
        "site": Volume.objects.get(path=SITE_DISK),
        "elsewhere": Volume.objects.create(host=other, path=BLUE_DATA, team=teams["blue"]),
    }
    rows["granted"].granted_to.add(teams["red"])
    return World(host=host, other=other, teams=teams, apis=apis, volumes=rows)


def create(api: APIClient, host: Host, name: str, **spec: Any) -> Any:
    body = {"name": name, "host": host.pk, "boot": {"kind": "iso", "iso": SITE_ISO}, **spec}
    return api.post("/api/v1/domains/", body, format="json")


def patch(api: APIClient, volume: Volume, **body: Any) -> Any:
    return api.patch(f"/api/v1/volumes/{volume.pk}/", body, format="json")


def listed(api: APIClient, **params: Any) -> set[str]:
    """The volumes the list shows, as "host:path"."""
    response = api.get("/api/v1/volumes/", params)
    assert response.status_code == 200, response.content
    return {f"{v['host_name']}:{v['path']}" for v in response.json()["results"]}


def test_a_volume_put_in_the_library_is_every_team_s_read_only_media(world: World, api: APIClient) -> None:
    """`api`: a site Owner, who manages the host."""
    red, blue = world.apis["red"], world.volumes["blue"]
    backed = {"disks": [{"size_gib": 1, "backing": BLUE_DATA}]}
    refused = create(red, world.host, "before", **backed)
    assert refused.json()["fields"]["disks.0.backing"] == [f"{BLUE_DATA} {NOT_YOURS}"]

    response = patch(api, blue, library=True)
    assert response.status_code == 200, response.content
    assert response.json()["library"] is True and response.json()["team"]["name"] == "blue"
    assert create(red, world.host, "backed", **backed).status_code == 202
    as_disk = create(red, world.host, "written", disks=[{"existing": BLUE_DATA}])
    assert as_disk.status_code == 400
    assert as_disk.json()["fields"]["disks.0.existing"] == [
        f"{BLUE_DATA} is in the site's library, which is read-only"
    ]
    assert not Domain.objects.filter(name="written").exists()


def test_a_granted_team_uses_a_volume_as_its_owner_does(world: World, api: APIClient) -> None:
    red, green, blue = world.apis["red"], world.apis["green"], world.volumes["blue"]
    response = patch(api, blue, granted_to=[world.teams["red"].pk])
    assert response.status_code == 200, response.content
    assert response.json()["granted_to"] == [{"id": world.teams["red"].pk, "name": "red"}]

    third = create(green, world.host, "greens", disks=[{"existing": BLUE_DATA}])
    assert third.status_code == 400
    assert third.json()["fields"]["disks.0.existing"] == [f"{BLUE_DATA} {NOT_YOURS}"]
    granted = create(red, world.host, "reds", disks=[{"existing": BLUE_DATA}])
    assert granted.status_code == 202, granted.content
    # Red sees it now, in the list and among the host's volumes.
    assert f"shared:{BLUE_DATA}" in listed(red)
    shown = red.get(f"/api/v1/hosts/{world.host.pk}/").json()["resources"]["pools"][0]["volumes"]
    assert BLUE_DATA in {v["path"] for v in shown}
    # A grant is to use, not to destroy: red's delete with its disks keeps blue's volume.
    reds = Domain.objects.get(name="reds")
    reds.disks = [{"target": "vda", "device": "disk", "path": BLUE_DATA}]
    assert volumes.kept_on_delete(reds) == {BLUE_DATA: "it belongs to another team"}
    # Withdrawn (an empty list), the grant no longer lets red name it.
    assert patch(api, blue, granted_to=[]).json()["granted_to"] == []
    reds.delete()
    refused = create(red, world.host, "reds2", disks=[{"existing": BLUE_DATA}])
    assert refused.json()["fields"]["disks.0.existing"] == [f"{BLUE_DATA} {NOT_YOURS}"]


def test_a_host_manager_hands_a_volume_to_another_team(world: World, api: APIClient) -> None:
    red, blue_api, blue = world.apis["red"], world.apis["blue"], world.volumes["blue"]
    assert create(red, world.host, "early", disks=[{"existing": BLUE_DATA}]).status_code == 400
    response = patch(api, blue, team=world.teams["red"].pk)
    assert response.status_code == 200, response.content
    assert response.json()["team"] == {"id": world.teams["red"].pk, "name": "red"}
    assert f"shared:{BLUE_DATA}" in listed(red)
    refused = create(blue_api, world.host, "was-mine", disks=[{"existing": BLUE_DATA}])
    assert refused.json()["fields"]["disks.0.existing"] == [f"{BLUE_DATA} {NOT_YOURS}"]
    assert create(red, world.host, "now-mine", disks=[{"existing": BLUE_DATA}]).status_code == 202
    # And to the site (no team): read-only for teams.
    assert patch(api, world.volumes["red"], team=None).json()["team"] is None
    refused = create(red, world.host, "site-s", disks=[{"existing": RED_DATA}])
    assert refused.json()["fields"]["disks.0.existing"] == [f"{RED_DATA} {NOT_YOURS}"]


def test_a_team_s_admin_changes_no_volume(world: World) -> None:
    """Red's Admin (no host.manage): its own volume is 403, naming the permission; blue's, which
    red does not see, is 404, like any id outside one's reach."""
    red, own, theirs = world.apis["red"], world.volumes["red"], world.volumes["blue"]
    response = patch(red, own, library=True)
    assert response.status_code == 403
    assert "'host.manage'" in response.json()["detail"] and "shared" in response.json()["detail"]
    assert patch(red, own, granted_to=[987654]).status_code == 403  # not a 400 about the team
    assert red.get(f"/api/v1/volumes/{own.pk}/").status_code == 200
    assert red.get(f"/api/v1/volumes/{theirs.pk}/").status_code == 404
    assert patch(red, theirs, team=world.teams["red"].pk).status_code == 404
    own.refresh_from_db()
    theirs.refresh_from_db()
    assert (own.library, own.team, theirs.team) == (False, world.teams["red"], world.teams["blue"])
    denied = AuditEvent.objects.filter(action="volume.partial_update", outcome="denied")
    assert denied.count() == 2  # the 403s; a 404 names nothing


def test_who_manages_a_host_manages_all_its_volumes_only(world: World, django_user_model: Any) -> None:
    """A role with host.manage (and host.view) on one host, no domain.view: every volume of
    that host is listed and changed; another host's is not reached."""
    keeper = Role.objects.create(name="Host keeper", permissions=["host.view", "host.manage"])
    user = django_user_model.objects.create_user("keeper", password="x-pass-1234")
    Grant.objects.create(user=user, role=keeper, scope=Grant.Scope.HOST, host=world.host)
    api = _api(user)
    assert listed(api) == {f"shared:{v.path}" for v in world.volumes.values() if v.host == world.host}
    assert patch(api, world.volumes["blue"], library=True).status_code == 200
    assert patch(api, world.volumes["elsewhere"], library=True).status_code == 404


def test_team_ids_are_checked(world: World, api: APIClient) -> None:
    blue = world.volumes["blue"]
    unknown = patch(api, blue, team=987654)
    assert unknown.status_code == 400
    assert unknown.json()["fields"] == {"team": ["no team with id 987654"]}
    bad = patch(api, blue, granted_to=[world.teams["red"].pk, 987654])
    assert bad.status_code == 400
    assert bad.json()["fields"] == {"granted_to": ["no team with id 987654"]}
    assert list(patch(api, blue, team="red").json()["fields"]) == ["team"]
    assert list(patch(api, blue, granted_to="red").json()["fields"]) == ["granted_to"]
    assert list(patch(api, blue, owner=1).json()["fields"]) == ["owner"]
    assert api.patch(f"/api/v1/volumes/{blue.pk}/", [1], format="json").status_code == 400
    blue.refresh_from_db()
    assert blue.team == world.teams["blue"] and not blue.granted_to.exists()
    assert not AuditEvent.objects.filter(action="volume.update").exists()


def test_who_sees_which_volume(world: World, api: APIClient, django_user_model: Any) -> None:
    site_s = {f"shared:{LIBRARY}", f"shared:{SITE_DISK}"}  # the library, a domain no team owns
    assert listed(world.apis["red"]) == {f"shared:{RED_DATA}", f"shared:{GRANTED}", *site_s}
    assert listed(world.apis["blue"]) == {
        f"shared:{BLUE_DATA}",
        f"shared:{BLUE_DISK}",
        f"shared:{GRANTED}",
        f"other:{BLUE_DATA}",
        *site_s,
    }
    assert listed(world.apis["green"]) == site_s
    everything = {f"{v.host.name}:{v.path}" for v in world.volumes.values()}
    assert listed(api) == everything
    assert listed(api, host=world.other.pk) == {f"other:{BLUE_DATA}"}
    assert api.get("/api/v1/volumes/", {"host": "x"}).json()["fields"] == {
        "host": ["must be an id (a number) from 1 to 9223372036854775807, not 'x'"]
    }
    # Who sees every domain of a host sees its volumes; a domain's own viewer, none.
    viewer = django_user_model.objects.create_user("watcher", password="x-pass-1234")
    grant(viewer, "Viewer", world.host)
    assert listed(_api(viewer)) == {v for v in everything if v.startswith("shared:")}
    one = django_user_model.objects.create_user("one", password="x-pass-1234")
    grant(one, "Viewer", Domain.objects.get(name="bluevm"))
    assert listed(_api(one)) == set()

    # Used by: the domain whose disk it is, named to those who may see it.
    rows = {v["path"]: v for v in world.apis["red"].get("/api/v1/volumes/").json()["results"]}
    assert (rows[GRANTED]["in_use"], rows[GRANTED]["domain"]) == (True, None)  # blue's sharer
    assert (rows[RED_DATA]["in_use"], rows[RED_DATA]["domain"]) == (False, None)
    assert rows[RED_DATA]["name"] == "red-data.qcow2" and rows[RED_DATA]["team"]["name"] == "red"
    blue_rows = {
        v["path"]: v
        for v in world.apis["blue"].get(f"/api/v1/volumes/?host={world.host.pk}").json()["results"]
    }
    sharer = Domain.objects.get(name="sharer")
    assert blue_rows[GRANTED]["domain"] == {"id": sharer.pk, "name": "sharer"}
    assert blue_rows[GRANTED]["granted_to"] == [{"id": world.teams["red"].pk, "name": "red"}]
    # Red no longer sees blue's volume once the grant goes.
    patch(api, world.volumes["granted"], granted_to=[])
    assert f"shared:{GRANTED}" not in listed(world.apis["red"])


def test_a_change_is_audited_with_what_changed(world: World, api: APIClient, user: Any) -> None:
    blue = world.volumes["blue"]
    assert patch(api, blue, library=True, granted_to=[world.teams["red"].pk]).status_code == 200
    (event,) = AuditEvent.objects.filter(action="volume.update")
    assert (event.actor, event.object_type, event.object_id) == (user, "volume", str(blue.pk))
    assert event.changes == {
        "host": "shared",
        "before": {"library": False, "granted_to": []},
        "after": {"library": True, "granted_to": ["red"]},
    }
    assert event.token_prefix  # through the API, with a token
    assert patch(api, blue, library=True).status_code == 200  # no change, nothing recorded
    assert AuditEvent.objects.filter(action="volume.update").count() == 1


def test_the_host_page_lists_volumes_and_changes_them(
    world: World, user: Any, django_user_model: Any
) -> None:
    browser = Client()
    browser.force_login(user)
    blue = world.volumes["blue"]
    page = browser.get(f"/hosts/{world.host.pk}/").content.decode()
    assert BLUE_DATA in page and f'action="/hosts/{world.host.pk}/volumes/{blue.pk}/"' in page
    assert "bluevm</a>" in page  # used by

    form = {"team": str(world.teams["blue"].pk), "library": "on", "granted_to": [str(world.teams["red"].pk)]}
    answer = browser.post(f"/hosts/{world.host.pk}/volumes/{blue.pk}/", form, follow=True)
    assert f"Saved who may use {BLUE_DATA}." in answer.content.decode()
    blue.refresh_from_db()
    assert blue.library and list(blue.granted_to.values_list("name", flat=True)) == ["red"]
    assert AuditEvent.objects.filter(action="volume.update", object_id=str(blue.pk)).count() == 1
    row = answer.content.decode().split(f'data-volume="{blue.pk}"')[1].split("</tr>")[0]
    assert 'class="badge library">library<' in row and "<td data-volume-granted>red</td>" in row

    # Left unticked and unselected: out of the library, granted to none; "" for the owner: the site.
    browser.post(f"/hosts/{world.host.pk}/volumes/{blue.pk}/", {"team": ""})
    blue.refresh_from_db()
    assert (blue.team, blue.library, blue.granted_to.count()) == (None, False, 0)

    bad = browser.post(f"/hosts/{world.host.pk}/volumes/{blue.pk}/", {"team": "abc"}, follow=True)
    assert "Unknown team. team: no team with id &#x27;abc&#x27;" in bad.content.decode()

    # A team's admin sees its volumes but no form, and a post changes nothing.
    rita = django_user_model.objects.get(username="red-admin")
    browser.force_login(rita)
    page = browser.get(f"/hosts/{world.host.pk}/").content.decode()
    assert RED_DATA in page and BLUE_DISK not in page and "volume-edit" not in page
    own = world.volumes["red"]
    for form in ({"library": "on"}, {"team": "abc"}):  # refused first, whatever the form says
        refused = browser.post(f"/hosts/{world.host.pk}/volumes/{own.pk}/", form, follow=True)
        assert "You need the permission &#x27;host.manage&#x27;" in refused.content.decode()
    own.refresh_from_db()
    assert not own.library
    hidden = world.volumes["bluevm"]
    assert browser.post(f"/hosts/{world.host.pk}/volumes/{hidden.pk}/", {"library": "on"}).status_code == 404
