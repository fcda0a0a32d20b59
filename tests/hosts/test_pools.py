"""Storage pools through the console: who may see and change them, what is refused before any
job starts (and why, naming the domains), the job and audit row each change makes, and the live
event when a host's pools change. The agent's side (libvirt, the XML) is tests/agent/test_pools*.py;
the whole path on a real agent is test_pool_jobs_on_a_real_agent below."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.audit.models import AuditEvent
from console.jobs.models import Job
from domains.models import Domain
from hosts.events import pools_changed
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

IMAGES = "/var/lib/libvirt/images"


def pool(name: str, path: str, *, active: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "dir",
        "active": active,
        "state": "running" if active else "inactive",
        "autostart": True,
        "persistent": True,
        "path": path,
        "source": "",
        "capacity_bytes": 100 << 30,
        "allocation_bytes": 40 << 30,
        "available_bytes": 60 << 30,
        "volume_count": 3 if active else None,
        "volumes": [],
        **extra,
    }


def give_pools(host: Host, *pools: dict[str, Any], types: list[str] | None = None) -> None:
    host.facts = {
        **host.facts,
        "resources": {"pools": list(pools), "pool_types": types or ["dir", "netfs", "logical"]},
    }
    host.save()


@pytest.mark.parametrize(("role", "scope"), CASES)
def test_who_sees_and_changes_pools(role: str, scope: str, world: World) -> None:  # noqa: F811 - the fixture
    """Listing needs host.view there; defining, starting, stopping and deleting need host.manage
    on the site or that host (never from a team role). Invisible hosts are 404, visible but not
    allowed 403, and a refusal starts no job."""
    for host in world.hosts.values():
        give_pools(host, pool("default", IMAGES), pool("spare", "/srv/spare", active=False))
    api = client_for(make_subject(role, scope, world))
    for name, host in world.hosts.items():
        sees = "host.view" in ROLES[role] and scope_reaches_host(scope, host, "host.view")
        manages = "host.manage" in ROLES[role] and scope_reaches_host(scope, host, "host.manage")
        listed = api.get(f"/api/v1/hosts/{host.pk}/pools/")
        assert listed.status_code == (200 if sees else 404), (name, listed.content)
        if sees:
            assert [p["name"] for p in listed.json()] == ["default", "spare"]
        expect = (202 if manages else 403) if sees else 404
        jobs = Job.objects.count()
        body = {"name": f"new-{name}", "type": "dir", "target_path": "/srv/new"}
        assert api.post(f"/api/v1/hosts/{host.pk}/pools/", body, format="json").status_code == expect, name
        assert api.post(f"/api/v1/hosts/{host.pk}/pools/spare/start/").status_code == expect, name
        assert api.post(f"/api/v1/hosts/{host.pk}/pools/default/refresh/").status_code == expect, name
        assert api.delete(f"/api/v1/hosts/{host.pk}/pools/spare/").status_code == expect, name
        assert Job.objects.count() == jobs + (4 if manages else 0), name


@pytest.fixture
def owner_api(admin_user: Any) -> APIClient:
    return client_for(admin_user)


@pytest.fixture
def pooled(host: Host) -> Host:
    """A host whose agent keeps its own files elsewhere: its `default` pool is like any other."""
    host.facts = {**host.facts, "default_pool_path": "/var/lib/domus-agent/pool"}
    give_pools(host, pool("default", IMAGES), pool("spare", "/srv/spare", active=False))
    return host


def test_a_define_is_a_job_and_an_audit_row(owner_api: APIClient, pooled: Host) -> None:
    body = {"name": "nfs1", "type": "netfs", "source_host": "nas.example", "source_dir": "/export"}
    body["target_path"] = "/srv/nfs1"
    response = owner_api.post(f"/api/v1/hosts/{pooled.pk}/pools/", body, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"])
    assert (job.kind, job.host, job.target_name) == ("pool.create", pooled, "pool nfs1")
    assert job.params["source_host"] == "nas.example" and job.params["start"] is True
    row = AuditEvent.objects.get(action="pool.create")
    assert row.changes["pool"] == "nfs1" and row.changes["job"] == job.pk


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": "p", "type": "btrfs", "target_path": "/a"}, "type", "'dir'"),
        ({"name": "p", "type": "zfs", "source_name": "tank"}, "type", "cannot run 'zfs' pools"),
        ({"name": "bad name", "type": "dir", "target_path": "/a"}, "name", "pattern"),
        ({"name": "p", "type": "dir", "target_path": "relative"}, "target_path", "pattern"),
        ({"name": "p", "type": "dir", "target_path": "/a", "colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_a_bad_pool_is_refused_by_field(
    owner_api: APIClient, pooled: Host, body: dict[str, Any], field: str, words: str
) -> None:
    response = owner_api.post(f"/api/v1/hosts/{pooled.pk}/pools/", body, format="json")
    assert response.status_code == 400, response.content
    fields = response.json()["fields"]
    assert any(words in message for message in fields[field]), fields
    assert not Job.objects.exists()


def test_a_taken_name_is_a_conflict(owner_api: APIClient, pooled: Host) -> None:
    body = {"name": "spare", "type": "dir", "target_path": "/srv/other"}
    response = owner_api.post(f"/api/v1/hosts/{pooled.pk}/pools/", body, format="json")
    assert (
        response.status_code == 409
        and "already has a storage pool named 'spare'" in response.json()["detail"]
    )


def test_stop_and_delete_are_refused_naming_the_domains(owner_api: APIClient, pooled: Host) -> None:
    def domain(name: str, state: str, path: str) -> Domain:
        return Domain.objects.create(
            name=name, host=pooled, state=state, disks=[{"target": "vda", "device": "disk", "path": path}]
        )

    domain("web1", Domain.State.RUNNING, f"{IMAGES}/web1.qcow2")
    domain("db1", Domain.State.SHUTOFF, f"{IMAGES}/db1.qcow2")
    domain("elsewhere", Domain.State.RUNNING, "/srv/images-not-in-default/x.qcow2")
    stop = owner_api.post(f"/api/v1/hosts/{pooled.pk}/pools/default/stop/")
    assert stop.status_code == 409
    assert stop.json()["detail"].endswith("these running domains use it: web1.")
    delete = owner_api.delete(f"/api/v1/hosts/{pooled.pk}/pools/default/")
    assert delete.status_code == 409
    assert delete.json()["detail"].endswith("these domains have disks in it: db1, web1.")
    assert not Job.objects.exists()
    listed = {p["name"]: p for p in owner_api.get(f"/api/v1/hosts/{pooled.pk}/pools/").json()}
    assert listed["default"]["used_by"] == ["db1", "web1"] and listed["spare"]["used_by"] == []


def test_a_domain_being_created_holds_the_pool_it_makes_a_disk_in(owner_api: APIClient, pooled: Host) -> None:
    Domain.objects.create(
        name="new1", host=pooled, state=Domain.State.NEW, spec={"disks": [{"size_gib": 1, "pool": "spare"}]}
    )
    Domain.objects.create(
        name="iso-only",
        host=pooled,
        state=Domain.State.NEW,
        spec={"disks": [{"existing": "/x", "pool": "spare"}]},
    )
    delete = owner_api.delete(f"/api/v1/hosts/{pooled.pk}/pools/spare/")
    assert delete.status_code == 409 and delete.json()["detail"].endswith(": new1.")


def test_refusals_of_state_and_unknown_names(owner_api: APIClient, pooled: Host) -> None:
    base = f"/api/v1/hosts/{pooled.pk}/pools"
    assert owner_api.post(f"{base}/default/start/").status_code == 409  # already running
    assert owner_api.post(f"{base}/spare/stop/").status_code == 409  # not running
    assert owner_api.post(f"{base}/nothing/start/").status_code == 404
    bad = owner_api.post(f"{base}/default/autostart/", {"autostart": "maybe"}, format="json")
    assert bad.status_code == 400 and "autostart" in bad.json()["fields"]
    assert owner_api.delete(f"{base}/spare/?delete_storage=perhaps").status_code == 400
    assert not Job.objects.exists()
    ok = owner_api.post(f"{base}/default/autostart/", {"autostart": False}, format="json")
    assert ok.status_code == 202
    assert Job.objects.get().params == {"pool": "default", "autostart": False}


def test_a_pool_job_whose_actor_lost_host_manage_fails_saying_so(
    pooled: Host, django_user_model: Any
) -> None:
    from console.jobs.runner import job_run
    from tests.conftest import grant

    user = django_user_model.objects.create_user("keeper", password="x-pass-1234")
    assignment = grant(user, "Owner", pooled)
    job = Job.objects.create(kind="pool.start", actor=user, host=pooled, params={"pool": "spare"})
    assignment.delete()
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error.startswith(f"Permission withdrawn from {user}")


def test_what_counts_as_a_change_of_pools() -> None:
    before = {"pools": [pool("default", IMAGES)]}
    fuller = {"pools": [pool("default", IMAGES, allocation_bytes=(40 << 30) + (1 << 20))]}
    assert not pools_changed(before, fuller)  # a guest wrote a MiB: not worth an event
    assert pools_changed(before, {"pools": [pool("default", IMAGES, allocation_bytes=50 << 30)]})
    assert pools_changed(before, {"pools": [pool("default", IMAGES, autostart=False)]})
    assert pools_changed(before, {"pools": [pool("default", IMAGES, active=False)]})
    assert pools_changed(before, {"pools": [pool("default", IMAGES), pool("new", "/srv/new")]})
    assert not pools_changed(before, {"pools": [pool("default", IMAGES, volumes=[{"name": "a.iso"}])]})


def test_the_host_page_shows_pools_and_defines_one(pooled: Host, admin_client: Any) -> None:
    Domain.objects.create(
        name="web1", host=pooled, state=Domain.State.RUNNING, disks=[{"path": f"{IMAGES}/web1.qcow2"}]
    )
    page = admin_client.get(f"/hosts/{pooled.pk}/").content.decode()
    row = page[page.index('data-pool="default"') : page.index('data-pool="spare"')]
    assert "40.0\xa0GiB of 100.0\xa0GiB" in row and "60.0\xa0GiB free" in row and "<meter" in row
    assert "web1" in row and ">Stop</button>" in row and ">Start</button>" not in row
    assert "New storage pool" in page and '<option value="netfs">' in page and '"zfs"' not in page
    form = {"name": "images2", "type": "dir", "target_path": "/srv/images2", "build": "on", "start": "on"}
    response = admin_client.post(f"/hosts/{pooled.pk}/pools/", form, follow=True)
    job = Job.objects.get(kind="pool.create")
    assert job.params["build"] is True and job.params["autostart"] is False  # unticked
    assert "Defining the storage pool images2" in response.content.decode()
    refused = admin_client.post(f"/hosts/{pooled.pk}/pools/default/stop/", follow=True).content.decode()
    assert "these running domains use it: web1" in refused
    assert Job.objects.count() == 1


def test_a_viewer_sees_pools_without_the_forms(pooled: Host, django_user_model: Any) -> None:
    from django.test import Client

    from tests.conftest import grant, quiet_login

    user = django_user_model.objects.create_user("vera", password="x-pass-1234")
    grant(user, "Viewer")
    client = Client()
    quiet_login(client, user)
    page = client.get(f"/hosts/{pooled.pk}/").content.decode()
    assert 'data-pool="spare"' in page and "New storage pool" not in page and ">Start</button>" not in page
    assert client.post(f"/hosts/{pooled.pk}/pools/spare/start/", follow=True).status_code == 200
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_hostwatch_records_a_change_of_pools_at_once_and_tells_the_pages(
    pooled: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool made behind Domus's back reaches the agent's next stats event: hostwatch records it
    then (not at its next flush) and publishes host.resources once; the same pools again, or a
    guest writing a few bytes, publish nothing."""
    import asyncio

    from agent.protocol import StatsEvent
    from hosts import services
    from hosts.hostwatch import HostKey, HostWatch

    published: list[dict[str, Any]] = []
    monkeypatch.setattr(services, "publish_on_commit", lambda event, *a: published.append(event))
    key = HostKey(pooled.pk, pooled.name, pooled.url, pooled.secret, "")
    watch = HostWatch()

    def stats(*pools: dict[str, Any]) -> StatsEvent:
        resources = {"pools": list(pools), "pool_types": ["dir"], "networks": [], "bridges": []}
        return StatsEvent(ts=1.0, free_memory_mib=1, domains_total=0, domains_running=0, resources=resources)

    same = stats(pool("default", IMAGES), pool("spare", "/srv/spare", active=False))
    grown = stats(pool("default", IMAGES), pool("spare", "/srv/spare", active=False), pool("new", "/srv/new"))
    written = stats(
        pool("default", IMAGES, allocation_bytes=(40 << 30) + 4096),
        pool("spare", "/srv/spare", active=False),
        pool("new", "/srv/new"),
    )
    for event in (same, grown, grown, written):
        asyncio.run(watch._apply(key, event, None))  # type: ignore[arg-type]
    assert [e["type"] for e in published] == ["host.resources"]
    assert [p["name"] for p in published[0]["pools"]] == ["default", "spare", "new"]
    assert "volumes" not in published[0]["pools"][0]  # each viewer's volumes are the page's to filter
    pooled.refresh_from_db()
    assert [p["name"] for p in pooled.resources["pools"]] == ["default", "spare", "new"]


def test_the_agent_s_own_pool_is_never_stopped_or_deleted(owner_api: APIClient, pooled: Host) -> None:
    pooled.facts = {**pooled.facts, "default_pool_path": IMAGES + "/"}
    pooled.save()
    base = f"/api/v1/hosts/{pooled.pk}/pools/default"
    for response in (owner_api.post(f"{base}/stop/"), owner_api.delete(f"{base}/")):
        assert response.status_code == 409
        assert (
            "where h1's agent keeps ISOs, cloud-init seeds and new domains' disks"
            in response.json()["detail"]
        )
    assert owner_api.post(f"{base}/refresh/").status_code == 202  # the rest it may
