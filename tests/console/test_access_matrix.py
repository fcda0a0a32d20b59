"""Every role x scope x action x object kind, through the API, each expected allow or deny.

The expectations come from this file's own tables (the issue's roles and the scope rules as
written in console/access/policy.py's docstring), not from the policy code under test.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from console.access.models import Membership, Team
from console.access.policy import reach
from console.access.services import api_token_issue
from console.jobs.models import Job
from console.realtime.consumers import may_see
from domains.events import domain_event
from domains.models import Domain
from hosts.events import host_event
from hosts.models import Host
from tests.conftest import builtin_role, grant

pytestmark = pytest.mark.django_db

ROLES = {
    "Viewer": {"domain.view", "domain.console.view", "host.view"},
    "Operator": {
        "domain.view",
        "domain.console.view",
        "host.view",
        "domain.console.interact",
        "domain.power",
    },
}
ROLES["Admin"] = ROLES["Operator"] | {
    "domain.create",
    "domain.edit",
    "domain.delete",
    "domain.migrate",
    "media.upload",
    "team.manage",
    "audit.view",
}
ROLES["Owner"] = ROLES["Admin"] | {"host.manage"}
SCOPES = ["site", "team:A", "host:shared", "domain:a1"]


@dataclass
class World:
    teams: dict[str, Team]
    hosts: dict[str, Host]
    domains: dict[str, Domain]
    jobs: dict[str, Job]


@pytest.fixture
def world() -> World:
    teams = {n: Team.objects.create(name=n) for n in ("A", "B")}
    hosts = {
        n: Host.objects.create(name=n, url=f"http://127.0.0.1:{i + 1}", secret="x" * 32, facts={})
        for i, n in enumerate(("shared", "reserved-A", "reserved-B"))
    }
    hosts["reserved-A"].teams.add(teams["A"])
    hosts["reserved-B"].teams.add(teams["B"])
    layout = {  # domain: (host, team)
        "a1": ("shared", "A"),
        "a2": ("reserved-A", "A"),
        "b1": ("shared", "B"),
        "b2": ("reserved-B", "B"),
        "site": ("shared", None),
    }
    domains = {
        n: Domain.objects.create(
            name=n,
            host=hosts[h],
            team=teams[t] if t else None,
            state=Domain.State.RUNNING,
            spec={"name": n, "boot": {"iso": "/var/lib/libvirt/images/x.iso"}},
        )
        for n, (h, t) in layout.items()
    }
    jobs = {n: Job.objects.create(kind="domain.start", domain=d, host=d.host) for n, d in domains.items()}
    return World(teams, hosts, domains, jobs)


def scope_reaches_domain(scope: str, domain: Domain) -> bool:
    kind, _, name = scope.partition(":")
    return {
        "site": True,
        "team": domain.team is not None and domain.team.name == name,
        "host": domain.host.name == name,
        "domain": domain.name == name,
    }[kind]


def scope_reaches_host(scope: str, host: Host, permission: str) -> bool:
    kind, _, name = scope.partition(":")
    if kind == "site":
        return True
    if kind == "host":
        return host.name == name
    if kind == "team" and permission not in ("host.manage", "audit.view"):
        reserved = [t.name for t in host.teams.all()]
        return not reserved or name in reserved
    return False


def make_subject(role: str, scope: str, world: World) -> Any:
    user = get_user_model().objects.create_user(f"{role}-{scope}".replace(":", "-"), password="x-pass-1234")
    kind, _, name = scope.partition(":")
    if kind == "site":
        grant(user, role)
    elif kind == "team":  # a membership, the usual way into a team
        Membership.objects.create(user=user, team=world.teams[name], role=builtin_role(role))
    elif kind == "host":
        grant(user, role, world.hosts[name])
    else:
        grant(user, role, world.domains[name])
    return user


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user)[1]}")
    return client


CASES = list(itertools.product(ROLES, SCOPES))


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_domains_jobs_and_consoles(role: str, scope: str, world: World) -> None:
    user = make_subject(role, scope, world)
    api = client_for(user)
    perms = ROLES[role]
    listed = {d["name"] for d in api.get("/api/v1/domains/").json()["results"]}
    expected_visible = {n for n, d in world.domains.items() if scope_reaches_domain(scope, d)}
    assert listed == expected_visible
    jobs_listed = {j["domain"] for j in api.get("/api/v1/jobs/").json()["results"]}
    assert jobs_listed == {world.domains[n].pk for n in expected_visible}
    for name, domain in world.domains.items():
        reaches = scope_reaches_domain(scope, domain)

        # Invisible objects are 404 (no guessing ids across teams), visible but not allowed 403.
        def expect(permission: str, ok: int) -> int:
            return (ok if permission in perms else 403) if reaches else 404  # noqa: B023

        assert api.get(f"/api/v1/domains/{domain.pk}/").status_code == (200 if reaches else 404), name
        assert api.get(f"/api/v1/jobs/{world.jobs[name].pk}/").status_code == (200 if reaches else 404), name
        for power in ("start", "reboot", "pause", "resume", "force-off"):
            status = api.post(f"/api/v1/domains/{domain.pk}/{power}/").status_code
            assert status == expect("domain.power", 202), (name, power)
        ticket = api.post(f"/api/v1/domains/{domain.pk}/console-tickets/", {"kind": "serial"}, format="json")
        assert ticket.status_code == expect("domain.console.interact", 201), name
        assert api.delete(f"/api/v1/domains/{domain.pk}/").status_code == expect("domain.delete", 202), name


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_retry_a_failed_create(role: str, scope: str, world: World) -> None:
    """Retrying a failed create needs domain.create where the domain is; nobody else's is seen."""
    user = make_subject(role, scope, world)
    api = client_for(user)
    Domain.objects.update(state=Domain.State.FAILED, failure="the agent said no")
    for name, domain in world.domains.items():
        reaches = scope_reaches_domain(scope, domain)
        allowed = "domain.create" in ROLES[role]
        response = api.post(f"/api/v1/domains/{domain.pk}/retry-create/", {}, format="json")
        assert response.status_code == ((202 if allowed else 403) if reaches else 404), (
            name,
            response.content,
        )
        domain.refresh_from_db()
        assert domain.state == (Domain.State.NEW if reaches and allowed else Domain.State.FAILED), name


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_create_in_a_team(role: str, scope: str, world: World) -> None:
    api = client_for(make_subject(role, scope, world))
    body = {
        "name": "new1",
        "team": world.teams["A"].pk,
        "host": world.hosts["shared"].pk,
        "boot": {"iso": "/var/lib/libvirt/images/x.iso"},
    }
    may_create = "domain.create" in ROLES[role] and scope in ("site", "team:A")
    sees_team = scope in ("site", "team:A")
    response = api.post("/api/v1/domains/", body, format="json")
    if may_create:
        assert response.status_code == 202, response.content
        assert Domain.objects.get(name="new1").team == world.teams["A"]
    else:
        assert response.status_code in ((403,) if sees_team else (400, 403)), response.content
        assert not Domain.objects.filter(name="new1").exists()


B_DISK = "/var/lib/libvirt/images/b1-disk0.qcow2"  # b1's disk


def path_fields(path: str) -> dict[str, dict[str, Any]]:
    """Every path a create can carry, each naming `path`."""
    return {
        "disks.0.existing": {"disks": [{"existing": path}]},
        "disks.0.backing": {"disks": [{"size_gib": 1, "backing": path}]},
        "boot.iso": {"boot": {"kind": "iso", "iso": path}},
        "boot.kernel": {"boot": {"kind": "kernel", "kernel": path}},
        "boot.initrd": {"boot": {"kind": "kernel", "kernel": "/var/lib/libvirt/images/k", "initrd": path}},
    }


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_no_create_reaches_another_team_s_volume_by_path(role: str, scope: str, world: World) -> None:
    """Every path-bearing field, for every role and scope: a domain of team A names one of team
    B's volumes only for those who manage the host (Owner on the site or the host); another
    domain's disk, nobody."""
    from domains.models import Volume

    b1 = world.domains["b1"]
    b1.disks = [{"target": "vda", "device": "disk", "path": B_DISK}]
    b1.save()
    Volume.objects.create(host=b1.host, path=B_DISK, team=world.teams["B"], domain=b1)
    api = client_for(make_subject(role, scope, world))
    may_create = "domain.create" in ROLES[role] and scope in ("site", "team:A")
    manages = "host.manage" in ROLES[role] and scope in ("site", "host:shared")
    cases = [(field, spec, True) for field, spec in path_fields("").items()]
    cases += [(field, spec, False) for field, spec in path_fields(B_DISK).items()]
    for index, (field, spec, unused) in enumerate(cases):
        if unused:  # a volume of B's no domain uses, one per case
            path = f"/var/lib/libvirt/images/b-data{index}.qcow2"
            Volume.objects.create(host=b1.host, path=path, team=world.teams["B"])
            spec = path_fields(path)[field]
        body = {
            "name": f"new{index}",
            "team": world.teams["A"].pk,
            "host": world.hosts["shared"].pk,
            "boot": {"iso": "/var/lib/libvirt/images/x.iso"},
            **spec,
        }
        response = api.post("/api/v1/domains/", body, format="json")
        if may_create and manages and unused:
            assert response.status_code == 202, (field, response.content)
            continue
        assert response.status_code in (400, 403), (field, response.content)
        assert not Domain.objects.filter(name=f"new{index}").exists(), field
        if may_create:
            assert list(response.json()["fields"]) == [field], (field, response.content)


VOLUMES = {  # name: (host, owner team, library, granted to)
    "a-shared": ("shared", "A", False, ()),
    "b-shared": ("shared", "B", False, ()),
    "b-granted-to-A": ("shared", "B", False, ("A",)),
    "library": ("shared", None, True, ()),
    "a-reserved": ("reserved-A", "A", False, ()),
    "b-reserved": ("reserved-B", "B", False, ()),
}


def scope_sees_volume(scope: str, name: str, world: World) -> bool:
    """A team's own and granted volumes, and the site's, on the hosts it sees; every volume of
    a host to those who see (or manage) all of it; to one domain's grantee, none."""
    host, team, library, granted = VOLUMES[name]
    kind, _, scoped = scope.partition(":")
    if kind in ("site", "host"):
        return kind == "site" or host == scoped
    if kind == "team":
        ours = team is None or library or team == scoped or scoped in granted
        return ours and scope_reaches_host(scope, world.hosts[host], "host.view")
    return False


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_volumes(role: str, scope: str, world: World) -> None:
    """Who sees which volume, and who changes one: host.manage on its host (site or host grant)."""
    from domains.models import Volume

    rows = {}
    for name, (host, team, library, granted) in VOLUMES.items():
        owner = world.teams[team] if team else None
        rows[name] = Volume.objects.create(
            host=world.hosts[host], path=f"/v/{name}", team=owner, library=library
        )
        rows[name].granted_to.set([world.teams[t] for t in granted])
    api = client_for(make_subject(role, scope, world))
    listed = {v["path"] for v in api.get("/api/v1/volumes/").json()["results"]}
    assert listed == {f"/v/{n}" for n in VOLUMES if scope_sees_volume(scope, n, world)}
    manages = "host.manage" in ROLES[role] and scope in ("site", "host:shared")
    for name, volume in rows.items():
        sees = scope_sees_volume(scope, name, world)
        response = api.patch(f"/api/v1/volumes/{volume.pk}/", {"library": not volume.library}, format="json")
        assert response.status_code == ((200 if manages else 403) if sees else 404), (name, response.content)
        if response.status_code == 403:
            assert "host.manage" in response.json()["detail"]
        volume.refresh_from_db()
        assert volume.library == (VOLUMES[name][2] != (response.status_code == 200)), name


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_hosts(role: str, scope: str, world: World) -> None:
    api = client_for(make_subject(role, scope, world))
    listed = {h["name"] for h in api.get("/api/v1/hosts/").json()["results"]}
    assert listed == {n for n, h in world.hosts.items() if scope_reaches_host(scope, h, "host.view")}
    may_add = "host.manage" in ROLES[role] and scope == "site"
    response = api.post(
        "/api/v1/hosts/", {"name": "h9", "url": "http://127.0.0.1:9", "secret": "s" * 32}, format="json"
    )
    assert response.status_code == (201 if may_add else 403), response.content
    if not may_add:
        assert "host.manage" in response.json()["detail"]  # says what is missing


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_live_events_reach_only_those_who_may_see(role: str, scope: str, world: World) -> None:
    user = make_subject(role, scope, world)
    domains, hosts = reach(user, "domain.view"), reach(user, "host.view")
    for domain in world.domains.values():
        assert may_see(domain_event(domain), domains, hosts, user.pk) == scope_reaches_domain(scope, domain)
    for host in world.hosts.values():
        assert may_see(host_event(host), domains, hosts, user.pk) == scope_reaches_host(
            scope, host, "host.view"
        )


def test_nobody_sees_or_does_anything(world: World) -> None:
    api = client_for(get_user_model().objects.create_user("nobody", password="x-pass-1234"))
    assert api.get("/api/v1/domains/").json()["results"] == []
    assert api.get("/api/v1/hosts/").json()["results"] == []
    assert api.get("/api/v1/jobs/").json()["results"] == []
    for domain in world.domains.values():
        for power in ("start", "reboot", "pause", "resume", "force-off"):
            assert api.post(f"/api/v1/domains/{domain.pk}/{power}/").status_code == 404
    body = {"name": "x", "host": world.hosts["shared"].pk, "boot": {"iso": "/var/lib/libvirt/images/x.iso"}}
    assert api.post("/api/v1/domains/", body, format="json").status_code == 400  # no host it may see


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_audit_trail_is_for_site_auditors_only(role: str, scope: str, world: World) -> None:
    from console.audit.services import audit_record

    audit_record(action="domain.create", obj=world.domains["a1"])
    response = client_for(make_subject(role, scope, world)).get("/api/v1/audit/")
    rows = response.json().get("results", []) if response.status_code == 200 else []
    if scope == "site" and "audit.view" in ROLES[role]:
        assert rows, "a site auditor reads the trail"
    else:
        assert response.status_code == 403 or rows == [], (response.status_code, rows)


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_detail_endpoints_do_not_leak_across_scopes(role: str, scope: str, world: World) -> None:
    """Object-id guessing: a host or team outside one's reach is 404, like a domain or job."""
    api = client_for(make_subject(role, scope, world))
    for name, host in world.hosts.items():
        expected = 200 if scope_reaches_host(scope, host, "host.view") else 404
        assert api.get(f"/api/v1/hosts/{host.pk}/").status_code == expected, name
    for name, team in world.teams.items():
        expected = 200 if scope in ("site", f"team:{name}") else 404
        assert api.get(f"/api/v1/teams/{team.pk}/").status_code == expected, name


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_console_ticket_stops_working_when_the_role_goes(role: str, scope: str, world: World) -> None:
    """A ticket issued while allowed is refused at the socket once the grant is withdrawn."""
    from console.access.models import Grant, Membership
    from domains.consoles import TicketRefused, console_ticket_redeem

    user = make_subject(role, scope, world)
    api = client_for(user)
    domain = world.domains["a1"]  # reached by every scope in SCOPES
    response = api.post(f"/api/v1/domains/{domain.pk}/console-tickets/", {"kind": "serial"}, format="json")
    if "domain.console.interact" not in ROLES[role]:
        assert response.status_code == 403
        return
    key = response.json()["ticket"]
    Grant.objects.filter(user=user).delete()
    Membership.objects.filter(user=user).delete()
    with pytest.raises(TicketRefused, match="withdrawn"):
        console_ticket_redeem(key=key, user=user, domain_id=str(domain.pk))
