"""Virtual networks through the console: who may see and change them, what is refused before any
job starts (and why, naming the domains), the job and audit row each change makes, the pages, and
the live event when a host's networks change. The agent's side (libvirt, the XML) is
tests/agent/test_net*.py; the whole path on a real namespaced host, with a real guest taking a
DHCP lease and the wizard starting a network in a browser, is tests/e2e/test_networks.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from console.audit.models import AuditEvent
from console.jobs.models import Job
from domains.models import Domain
from hosts.events import resources_changed
from hosts.models import Host
from tests.console.test_access_matrix import (
    CASES,
    ROLES,
    World,
    client_for,
    make_subject,
    scope_reaches_host,
    world,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.django_db

MAC = "52:54:00:aa:bb:01"


def network(name: str, *, active: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "active": active,
        "forward": "nat",
        "bridge": f"virbr-{name}"[:15],
        "autostart": True,
        "persistent": True,
        "ipv4": "192.168.122.1/24",
        "ipv6": None,
        "dhcp_start": "192.168.122.2",
        "dhcp_end": "192.168.122.254",
        "hosts": [],
        "forward_dev": None,
        **extra,
    }


def give_networks(host: Host, *networks: dict[str, Any], bridges: list[str] | None = None) -> None:
    resources = {"pools": [], "pool_types": ["dir"], "networks": list(networks), "bridges": bridges or []}
    host.facts = {**host.facts, "resources": resources}
    host.save()


def nic(name: str, source: str = "network") -> dict[str, Any]:
    return {"mac": MAC, "source": source, "name": name, "model": "virtio", "target": None, "link": "up"}


@pytest.fixture
def owner_api(admin_user: Any) -> APIClient:
    return client_for(admin_user)


@pytest.fixture
def netted(host: Host) -> Host:
    give_networks(
        host,
        network("default"),
        network("spare", active=False, ipv4="10.9.0.1/24", dhcp_start=None, dhcp_end=None),
        bridges=["br0"],
    )
    return host


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_who_sees_and_changes_networks(role: str, scope: str, world: World) -> None:  # noqa: F811 - the fixture
    """Listing needs host.view there; defining, starting, stopping, changing DHCP and deleting
    need host.manage on the site or that host. Invisible hosts are 404, visible but not allowed
    403, and a refusal starts no job."""
    for host in world.hosts.values():
        give_networks(host, network("default"), network("spare", active=False, ipv4="10.9.0.1/24"))
    api = client_for(make_subject(role, scope, world))
    for name, host in world.hosts.items():
        sees = "host.view" in ROLES[role] and scope_reaches_host(scope, host, "host.view")
        manages = "host.manage" in ROLES[role] and scope_reaches_host(scope, host, "host.manage")
        base = f"/api/v1/hosts/{host.pk}/networks"
        listed = api.get(f"{base}/")
        assert listed.status_code == (200 if sees else 404), (name, listed.content)
        if sees:
            assert [n["name"] for n in listed.json()] == ["default", "spare"]
        expect = (202 if manages else 403) if sees else 404
        jobs = Job.objects.count()
        body = {"name": f"new-{name}", "mode": "isolated"}
        assert api.post(f"{base}/", body, format="json").status_code == expect, name
        assert api.post(f"{base}/spare/start/").status_code == expect, name
        dhcp = {"dhcp_start": "10.9.0.10", "dhcp_end": "10.9.0.20"}
        assert api.put(f"{base}/spare/dhcp/", dhcp, format="json").status_code == expect, name
        assert api.delete(f"{base}/spare/").status_code == expect, name
        assert Job.objects.count() == jobs + (4 if manages else 0), name


def test_a_define_is_a_job_and_an_audit_row(owner_api: APIClient, netted: Host) -> None:
    body = {"name": "lab", "mode": "nat", "ipv4": "192.168.150.1/24"}
    body |= {"dhcp_start": "192.168.150.100", "dhcp_end": "192.168.150.200"}
    response = owner_api.post(f"/api/v1/hosts/{netted.pk}/networks/", body, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"])
    assert (job.kind, job.host, job.target_name) == ("network.create", netted, "network lab")
    assert job.params["ipv4"] == "192.168.150.1/24" and job.params["start"] is True
    row = AuditEvent.objects.get(action="network.create")
    assert row.changes["network"] == "lab" and row.changes["job"] == job.pk


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": "n", "mode": "nat"}, "ipv4", "required in nat mode"),
        ({"name": "n", "mode": "bridge"}, "bridge", "required in bridge mode"),
        (
            {"name": "n", "mode": "bridge", "bridge": "br9"},
            "bridge",
            "has no host bridge 'br9' (its bridges: br0)",
        ),
        (
            {"name": "n", "mode": "bridge", "bridge": "br0", "ipv4": "10.1.0.1/24"},
            "ipv4",
            "not used in bridge",
        ),
        ({"name": "n", "ipv4": "10.1.0.0/24"}, "ipv4", "not the subnet's own"),
        ({"name": "n", "ipv4": "10.1.0.1"}, "ipv4", "with its prefix"),
        ({"name": "n", "ipv4": "192.168.122.9/16"}, "ipv4", "overlaps the subnet of h1's network 'default'"),
        ({"name": "n", "ipv4": "10.1.0.1/24", "bridge": "virbr-default"}, "bridge", "already the network"),
        ({"name": "n", "ipv4": "10.1.0.1/24", "dhcp_start": "10.1.0.9"}, "dhcp_end", "needs both ends"),
        (
            {"name": "n", "ipv4": "10.1.0.1/24", "dhcp_start": "10.2.0.9", "dhcp_end": "10.1.0.20"},
            "dhcp_start",
            "must be a host address in 10.1.0.0/24",
        ),
        ({"name": "bad name", "mode": "isolated"}, "name", "pattern"),
        ({"name": "n", "mode": "isolated", "colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_a_bad_network_is_refused_by_field(
    owner_api: APIClient, netted: Host, body: dict[str, Any], field: str, words: str
) -> None:
    response = owner_api.post(f"/api/v1/hosts/{netted.pk}/networks/", body, format="json")
    assert response.status_code == 400, response.content
    assert words in " ".join(response.json()["fields"][field]), response.json()
    assert not Job.objects.exists()


def test_a_taken_name_is_a_conflict(owner_api: APIClient, netted: Host) -> None:
    response = owner_api.post(
        f"/api/v1/hosts/{netted.pk}/networks/", {"name": "spare", "mode": "isolated"}, format="json"
    )
    assert (
        response.status_code == 409
        and "already has a virtual network named 'spare'" in response.json()["detail"]
    )


def test_stop_and_delete_are_refused_while_a_running_domain_is_attached(
    owner_api: APIClient, netted: Host
) -> None:
    Domain.objects.create(name="web1", host=netted, state=Domain.State.RUNNING, nics=[nic("default")])
    Domain.objects.create(name="db1", host=netted, state=Domain.State.SHUTOFF, nics=[nic("default")])
    Domain.objects.create(
        name="bridged", host=netted, state=Domain.State.RUNNING, nics=[nic("br0", "bridge")]
    )
    base = f"/api/v1/hosts/{netted.pk}/networks/default"
    for response in (owner_api.post(f"{base}/stop/"), owner_api.delete(f"{base}/")):
        assert response.status_code == 409
        assert "these running domains are attached to it: web1. Shut them down" in response.json()["detail"]
    assert not Job.objects.exists()
    listed = {n["name"]: n for n in owner_api.get(f"/api/v1/hosts/{netted.pk}/networks/").json()}
    assert listed["default"]["attached"] == ["db1", "web1"] and listed["default"]["running_attached"] == 1
    assert listed["spare"]["attached"] == []
    # An inactive network with only shut-off domains may go.
    Domain.objects.create(name="old", host=netted, state=Domain.State.SHUTOFF, nics=[nic("spare")])
    assert owner_api.delete(f"/api/v1/hosts/{netted.pk}/networks/spare/").status_code == 202


def test_a_domain_being_created_counts_as_attached(owner_api: APIClient, netted: Host) -> None:
    Domain.objects.create(
        name="new1",
        host=netted,
        state=Domain.State.NEW,
        spec={"nics": [{"source": "network", "name": "spare"}]},
    )
    listed = {n["name"]: n for n in owner_api.get(f"/api/v1/hosts/{netted.pk}/networks/").json()}
    assert listed["spare"]["attached"] == ["new1"]


def test_refusals_of_state_and_unknown_names(owner_api: APIClient, netted: Host) -> None:
    base = f"/api/v1/hosts/{netted.pk}/networks"
    assert owner_api.post(f"{base}/default/start/").status_code == 409  # already running
    assert owner_api.post(f"{base}/spare/stop/").status_code == 409  # not running
    assert owner_api.post(f"{base}/nothing/start/").status_code == 404
    assert owner_api.get(f"{base}/nothing/").status_code == 404
    bad = owner_api.post(f"{base}/default/autostart/", {"autostart": "maybe"}, format="json")
    assert bad.status_code == 400 and "autostart" in bad.json()["fields"]
    assert not Job.objects.exists()
    ok = owner_api.post(f"{base}/default/autostart/", {"autostart": False}, format="json")
    assert ok.status_code == 202
    assert Job.objects.get().params == {"network": "default", "autostart": False}


def test_dhcp_changes_are_checked_against_the_network_and_audited(owner_api: APIClient, netted: Host) -> None:
    base = f"/api/v1/hosts/{netted.pk}/networks"
    hosts = [{"mac": "52-54-00-AA-BB-02", "ip": "192.168.122.20", "name": "web1"}]
    good = {"dhcp_start": "192.168.122.100", "dhcp_end": "192.168.122.200", "hosts": hosts}
    response = owner_api.put(f"{base}/default/dhcp/", good, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"])
    assert job.kind == "network.dhcp" and job.params["hosts"] == [
        {"mac": "52:54:00:aa:bb:02", "ip": "192.168.122.20", "name": "web1"}
    ]
    audit = AuditEvent.objects.get(action="network.dhcp")
    assert audit.changes["before"]["dhcp_start"] == "192.168.122.2"
    assert audit.changes["after"]["dhcp_start"] == "192.168.122.100"
    outside = {**good, "hosts": [{"mac": MAC, "ip": "10.0.0.5"}]}
    refused = owner_api.put(f"{base}/default/dhcp/", outside, format="json")
    assert refused.status_code == 400 and "must be a guest's address in 192.168.122.0/24" in json.dumps(
        refused.json()["fields"]
    )
    twice = {**good, "hosts": [{"mac": MAC, "ip": "192.168.122.5"}, {"mac": MAC, "ip": "192.168.122.6"}]}
    assert "is listed twice" in json.dumps(
        owner_api.put(f"{base}/default/dhcp/", twice, format="json").json()
    )
    no_address = owner_api.put(
        f"{base}/spare/dhcp/", {"dhcp_start": "10.9.0.10", "dhcp_end": "10.8.0.20"}, format="json"
    )
    assert no_address.status_code == 400 and "dhcp_end" in no_address.json()["fields"]
    assert Job.objects.count() == 1


def test_what_counts_as_a_change_of_networks() -> None:
    before = {"pools": [], "networks": [network("default")], "bridges": ["br0"]}
    assert not resources_changed(before, json.loads(json.dumps(before)))
    assert resources_changed(before, {**before, "networks": [network("default", active=False)]})
    assert resources_changed(before, {**before, "networks": [network("default"), network("lab")]})
    assert resources_changed(before, {**before, "bridges": []})


def test_the_host_page_shows_networks_and_defines_one(netted: Host, admin_client: Any) -> None:
    Domain.objects.create(name="web1", host=netted, state=Domain.State.RUNNING, nics=[nic("default")])
    page = admin_client.get(f"/hosts/{netted.pk}/").content.decode()
    row = page[page.index('data-network="default"') : page.index('data-network="spare"')]
    assert "192.168.122.1/24" in row and "192.168.122.2" in row and "web1" in row and ">Stop</button>" in row
    assert 'data-bridge="br0"' in page and "New virtual network" in page
    form = {
        "name": "lab",
        "mode": "nat",
        "ipv4": "192.168.150.1/24",
        "dhcp_start": "192.168.150.10",
        "dhcp_end": "192.168.150.50",
        "start": "on",
        "hosts": f"{MAC} 192.168.150.5 web1\n# a comment\n",
    }
    response = admin_client.post(f"/hosts/{netted.pk}/networks/", form, follow=True)
    job = Job.objects.get(kind="network.create")
    assert job.params["autostart"] is False and job.params["hosts"] == [
        {"mac": MAC, "ip": "192.168.150.5", "name": "web1"}
    ]
    assert "Defining the virtual network lab" in response.content.decode()
    refused = admin_client.post(f"/hosts/{netted.pk}/networks/default/stop/", follow=True).content.decode()
    assert "these running domains are attached to it: web1" in refused
    bad = admin_client.post(f"/hosts/{netted.pk}/networks/", {**form, "hosts": "nonsense"}, follow=True)
    assert "line 1: write MAC, IP and optionally a name" in bad.content.decode()
    assert Job.objects.count() == 1


def test_the_network_page_edits_dhcp(netted: Host, admin_client: Any) -> None:
    page = admin_client.get(f"/hosts/{netted.pk}/networks/default/").content.decode()
    assert "Save DHCP" in page and 'value="192.168.122.2"' in page
    form = {"dhcp_start": "192.168.122.50", "dhcp_end": "192.168.122.60", "hosts": f"{MAC}, 192.168.122.7"}
    response = admin_client.post(f"/hosts/{netted.pk}/networks/default/", form, follow=True)
    assert "Changing the DHCP of default" in response.content.decode()
    job = Job.objects.get(kind="network.dhcp")
    assert job.params["hosts"] == [{"mac": MAC, "ip": "192.168.122.7", "name": None}]
    assert admin_client.get(f"/hosts/{netted.pk}/networks/nothing/").status_code == 404


def test_a_viewer_sees_networks_without_the_forms(netted: Host, django_user_model: Any) -> None:
    from django.test import Client

    from tests.conftest import grant, quiet_login

    user = django_user_model.objects.create_user("vera", password="x-pass-1234")
    grant(user, "Viewer")
    client = Client()
    quiet_login(client, user)
    page = client.get(f"/hosts/{netted.pk}/").content.decode()
    assert 'data-network="spare"' in page and "New virtual network" not in page
    assert "Save DHCP" not in client.get(f"/hosts/{netted.pk}/networks/default/").content.decode()
    client.post(f"/hosts/{netted.pk}/networks/spare/start/", follow=True)
    client.post(f"/hosts/{netted.pk}/networks/default/", {"dhcp_start": "192.168.122.9"}, follow=True)
    assert not Job.objects.exists()


def test_the_wizard_says_who_may_start_a_network(
    netted: Host, admin_client: Any, django_user_model: Any
) -> None:
    from django.test import Client

    from tests.conftest import grant, quiet_login

    def wizard_host(client: Any) -> dict[str, Any]:
        page = client.get("/domains/new/").content.decode()
        start = page.index('id="wizard-data"')
        blob = page[page.index(">", start) + 1 : page.index("</script>", start)]
        return next(h for h in json.loads(blob)["hosts"] if h["id"] == netted.pk)

    seen = wizard_host(admin_client)
    assert seen["may_manage_networks"] is True
    assert {n["name"]: n["active"] for n in seen["networks"]} == {"default": True, "spare": False}
    assert [n["teams"] for n in seen["networks"]] == [[], []]  # kept for no team: offered to all
    user = django_user_model.objects.create_user("otto", password="x-pass-1234")
    grant(user, "Operator")
    client = Client()
    quiet_login(client, user)
    assert wizard_host(client)["may_manage_networks"] is False


@pytest.mark.django_db(transaction=True)
def test_hostwatch_tells_the_pages_when_a_network_starts(
    netted: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from agent.protocol import StatsEvent
    from hosts import services
    from hosts.hostwatch import HostKey, HostWatch

    published: list[dict[str, Any]] = []
    monkeypatch.setattr(services, "publish_on_commit", lambda event, *a: published.append(event))
    key = HostKey(netted.pk, netted.name, netted.url, netted.secret, "")
    watch = HostWatch()

    def stats(*networks: dict[str, Any]) -> StatsEvent:
        resources = {"pools": [], "pool_types": ["dir"], "networks": list(networks), "bridges": ["br0"]}
        return StatsEvent(ts=1.0, free_memory_mib=1, domains_total=0, domains_running=0, resources=resources)

    stopped = stats(network("default"), network("spare", active=False, ipv4="10.9.0.1/24"))
    started = stats(network("default"), network("spare", ipv4="10.9.0.1/24"))
    for event in (stopped, started, started):
        asyncio.run(watch._apply(key, event, None))  # type: ignore[arg-type]
    assert [e["type"] for e in published] == ["host.resources", "host.resources"]
    assert [n["active"] for n in published[-1]["networks"]] == [True, True]


def test_the_domain_page_lists_its_network_cards(netted: Host, admin_client: Any) -> None:
    cards = [nic("default"), {**nic("br0", "bridge"), "mac": "52:54:00:aa:bb:02", "link": "down"}]
    domain = Domain.objects.create(name="web1", host=netted, state=Domain.State.RUNNING, nics=cards)
    page = admin_client.get(f"/domains/{domain.pk}/").content.decode()
    section = page[
        page.index('<section id="nics"') : page.index("</section>", page.index('<section id="nics"'))
    ]
    assert f'href="/hosts/{netted.pk}/networks/default/"' in section and MAC in section
    assert "host bridge <code>br0</code>" in section and '<span class="badge">down</span>' in section


def test_a_network_kept_for_a_team(host: Host, owner_api: APIClient, django_user_model: Any) -> None:
    """Kept for blue, the network takes cards of blue's domains (and of anyone who manages the
    host) only: a red member's create and card are refused before any job, naming it; opened
    again, red may use it."""
    from console.access.models import Membership, Team
    from tests.conftest import builtin_role
    from tests.domains.test_api import body

    give_networks(host, network("default"), network("lab", ipv4="10.9.0.1/24"))
    host.facts = {**host.facts, "default_pool_path": "/var/lib/libvirt/images"}
    host.save()
    red, blue = Team.objects.create(name="red"), Team.objects.create(name="blue")
    member = django_user_model.objects.create_user("rita", password="x-pass-1234")
    Membership.objects.create(user=member, team=red, role=builtin_role("Owner"))
    rita = client_for(member)
    base = f"/api/v1/hosts/{host.pk}/networks/lab"
    assert rita.put(f"{base}/teams/", {"teams": [red.pk]}, format="json").status_code in (403, 404)
    kept = owner_api.put(f"{base}/teams/", {"teams": [blue.pk]}, format="json")
    assert kept.status_code == 200 and kept.json() == {"teams": [blue.pk]}
    assert AuditEvent.objects.get(action="network.teams").changes == {
        "network": "lab",
        "before": [],
        "after": ["blue"],
    }
    assert owner_api.put(f"{base}/teams/", {"teams": [999]}, format="json").status_code == 400
    listed = {n["name"]: n for n in owner_api.get(f"/api/v1/hosts/{host.pk}/networks/").json()}
    assert listed["lab"]["teams"] == [{"id": blue.pk, "name": "blue"}] and listed["default"]["teams"] == []

    nics = [{"source": "network", "name": "lab"}]
    refused = rita.post("/api/v1/domains/", {**body(host), "team": red.pk, "nics": nics}, format="json")
    assert refused.status_code == 400, refused.content
    assert "'lab' on h1 is kept for other teams: team red may not use it" in str(
        refused.json()["fields"]["nics.0.name"]
    )
    web = Domain.objects.create(name="web9", host=host, team=red, state=Domain.State.SHUTOFF)
    card = rita.post(f"/api/v1/domains/{web.pk}/nics/", {"name": "lab"}, format="json")
    assert card.status_code == 400 and "kept for other teams" in str(card.json()["fields"]["name"])
    assert rita.post(f"/api/v1/domains/{web.pk}/nics/", {"name": "default"}, format="json").status_code == 202
    assert (
        owner_api.post(f"/api/v1/domains/{web.pk}/nics/", {"name": "lab"}, format="json").status_code == 202
    )

    assert owner_api.put(f"{base}/teams/", {"teams": []}, format="json").json() == {"teams": []}
    assert rita.post(f"/api/v1/domains/{web.pk}/nics/", {"name": "lab"}, format="json").status_code == 202
    created = rita.post("/api/v1/domains/", {**body(host), "team": red.pk, "nics": nics}, format="json")
    assert created.status_code == 202, created.content


def test_the_network_page_keeps_it_for_teams(netted: Host, admin_client: Any) -> None:
    from console.access.models import Team

    blue = Team.objects.create(name="blue")
    page = admin_client.get(f"/hosts/{netted.pk}/networks/default/").content.decode()
    assert "Open to every team" in page and f'<option value="{blue.pk}">blue</option>' in page
    response = admin_client.post(
        f"/hosts/{netted.pk}/networks/default/teams/", {"teams": [str(blue.pk)]}, follow=True
    )
    text = response.content.decode()
    assert "default is kept for 1 team(s)." in text and "<strong>blue</strong>" in text
    assert f'<option value="{blue.pk}" selected>blue</option>' in text
