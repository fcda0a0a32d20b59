"""A pool's volumes through the console: the refusals made before any job starts, who may do
what, and the whole path (API -> job -> real agent on this machine's libvirtd -> the host's pools
recorded) for pools and volumes: define and build a pool, create, list, grow, copy and delete
volumes, and remove a deleted domain's orphaned disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from console.audit.models import AuditEvent
from console.jobs.models import Job
from console.jobs.runner import job_run
from domains.models import Domain, Volume
from hosts.models import Host
from tests.console.test_access_matrix import client_for
from tests.hosts.test_pools import IMAGES, give_pools, pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_api(admin_user: Any) -> APIClient:
    return client_for(admin_user)


@pytest.fixture
def pooled(host: Host) -> Host:
    give_pools(host, pool("default", IMAGES), pool("spare", "/srv/spare", active=False))
    return host


def test_refusals_before_any_job(owner_api: APIClient, pooled: Host) -> None:
    base = f"/api/v1/hosts/{pooled.pk}/pools"
    Domain.objects.create(
        name="web1", host=pooled, state=Domain.State.RUNNING, disks=[{"path": f"{IMAGES}/web1.qcow2"}]
    )
    Domain.objects.create(
        name="db1", host=pooled, state=Domain.State.SHUTOFF, disks=[{"path": f"{IMAGES}/db1.qcow2"}]
    )
    delete = owner_api.delete(f"{base}/default/volumes/db1.qcow2/")
    assert (
        delete.status_code == 409 and delete.json()["detail"] == "db1.qcow2 cannot be deleted: used by db1."
    )
    clone = owner_api.post(f"{base}/default/volumes/web1.qcow2/clone/", {"name": "copy.qcow2"}, format="json")
    assert (
        clone.status_code == 409
        and "cannot be copied while it is written: used by web1" in clone.json()["detail"]
    )
    cases = [
        (f"{base}/default/volumes/", {"name": "a.qcow2", "size": "lots"}, "size"),
        (f"{base}/default/volumes/", {"name": ".hidden", "size": 1}, "name"),
        (f"{base}/default/volumes/", {"name": "a.qcow2", "size": 1, "format": "vmdk"}, "format"),
        (f"{base}/default/volumes/db1.qcow2/resize/", {"size": -1}, "size"),
        (f"{base}/default/volumes/db1.qcow2/clone/", {"name": "../x"}, "name"),
    ]
    for url, body, field in cases:
        response = owner_api.post(url, body, format="json")
        assert response.status_code == 400 and field in response.json()["fields"], (
            url,
            body,
            response.content,
        )
    stopped = owner_api.post(f"{base}/spare/volumes/", {"name": "a.qcow2", "size": 1}, format="json")
    assert stopped.status_code == 409 and "not running" in stopped.json()["detail"]
    assert (
        owner_api.post(f"{base}/nothing/volumes/", {"name": "a", "size": 1}, format="json").status_code == 404
    )
    assert not Job.objects.exists()
    grow = owner_api.post(f"{base}/default/volumes/db1.qcow2/resize/", {"size": "30 GiB"}, format="json")
    assert grow.status_code == 202
    job = Job.objects.get()
    assert job.kind == "volume.resize" and job.params == {
        "pool": "default",
        "volume": "db1.qcow2",
        "capacity_bytes": 30 << 30,
    }
    assert AuditEvent.objects.get(action="volume.resize").changes["volume"] == "db1.qcow2"


def test_changing_volumes_needs_host_manage(pooled: Host, django_user_model: Any) -> None:
    from tests.conftest import grant

    user = django_user_model.objects.create_user("ops", password="x-pass-1234")
    grant(user, "Admin")  # every domain permission on the site, not host.manage
    api = client_for(user)
    base = f"/api/v1/hosts/{pooled.pk}/pools/default/volumes"
    assert api.post(f"{base}/", {"name": "a.qcow2", "size": 1}, format="json").status_code == 403
    assert api.delete(f"{base}/a.qcow2/").status_code == 403
    assert api.post(f"/api/v1/hosts/{pooled.pk}/orphans/", {}, format="json").status_code == 403
    assert not Job.objects.exists()


def test_orphans_are_a_deleted_domain_s_kept_disks(owner_api: APIClient, pooled: Host) -> None:
    web = Domain.objects.create(name="web1", host=pooled, state=Domain.State.SHUTOFF)
    used = Domain.objects.create(
        name="db1", host=pooled, state=Domain.State.SHUTOFF, disks=[{"path": f"{IMAGES}/taken.qcow2"}]
    )
    Volume.objects.create(host=pooled, path=f"{IMAGES}/web1-disk0.qcow2", domain=web, domain_name="web1")
    Volume.objects.create(host=pooled, path=f"{IMAGES}/taken.qcow2")  # a domain uses it again
    Volume.objects.create(host=pooled, path=f"{IMAGES}/made.qcow2", origin=Volume.Origin.POOL)
    Volume.objects.create(host=pooled, path=f"{IMAGES}/lib.iso", library=True)
    assert owner_api.get(f"/api/v1/hosts/{pooled.pk}/orphans/").json() == []
    from domains.services import domain_forget

    domain_forget(domain=web)
    assert used.pk
    listed = owner_api.get(f"/api/v1/hosts/{pooled.pk}/orphans/").json()
    assert [(o["path"], o["formerly"]) for o in listed] == [(f"{IMAGES}/web1-disk0.qcow2", "web1")]
    bad = owner_api.post(
        f"/api/v1/hosts/{pooled.pk}/orphans/", {"ids": [listed[0]["id"] + 1000]}, format="json"
    )
    assert bad.status_code == 400
    response = owner_api.post(f"/api/v1/hosts/{pooled.pk}/orphans/", {}, format="json")
    assert response.status_code == 202
    job = Job.objects.get(pk=response.json()["job"])
    assert job.kind == "volume.orphans"
    assert job.params["volumes"] == [{"id": listed[0]["id"], "path": f"{IMAGES}/web1-disk0.qcow2"}]
    page = owner_api.get(f"/hosts/{pooled.pk}/")  # the token is not a session: the page needs one
    assert page.status_code == 302


# -- the whole path, on a real agent and libvirtd ---------------------------------------------------


@pytest.fixture
def real_agent(tmp_path: Path) -> Any:
    """A real agent of its own on this machine's libvirtd (qemu:///system)."""
    from tests.agent.conftest import launch_agent, stop_agent
    from tests.e2e.conftest import _libvirt_works

    if not _libvirt_works():
        pytest.skip("no libvirt daemon answers on qemu:///system (run `make test`, which starts it)")
    running = launch_agent(
        uri="qemu:///system",
        pool_dir=Path("/var/lib/libvirt/images"),
        log_path=tmp_path / "agent.log",
        accel="tcg",
        ready_timeout=60,
    )
    yield running
    stop_agent(running)


@pytest.fixture
def pool_name() -> Any:
    """A pool name of this test's own; undefined at the end whatever the test left."""
    import subprocess
    import uuid

    name = f"scratch-{uuid.uuid4().hex[:6]}"
    yield name
    for verb in ("pool-destroy", "pool-undefine"):
        subprocess.run(["virsh", "-c", "qemu:///system", verb, name], capture_output=True, check=False)


@pytest.fixture
def agent_host(real_agent: Any, db: None) -> Host:
    from hosts.agent import run_agent
    from hosts.services import host_observe

    host = Host.objects.create(
        name="real", url=real_agent.url, secret=real_agent.secret, state=Host.State.ONLINE
    )
    facts = run_agent(host, lambda client: client.host())
    host_observe(host_id=host.pk, state=Host.State.ONLINE, facts=facts.model_dump(mode="json"))
    return host


def run_jobs() -> list[Job]:
    """Run what is queued, as a worker would (each once), and return them finished."""
    jobs = list(Job.objects.filter(status=Job.Status.QUEUED).order_by("pk"))
    for job in jobs:
        job_run(job.pk)
        job.refresh_from_db()
    return jobs


def assert_succeeded(jobs: list[Job]) -> None:
    assert [j.status for j in jobs] == [Job.Status.SUCCEEDED] * len(jobs), [
        (j.kind, j.error, j.log) for j in jobs
    ]


@pytest.mark.libvirt
def test_pools_and_volumes_end_to_end_on_a_real_agent(
    owner_api: APIClient, agent_host: Host, tmp_path: Path, pool_name: str
) -> None:
    base = f"/api/v1/hosts/{agent_host.pk}/pools"
    target = tmp_path / "scratch"  # made by the pool's build
    body = {"name": pool_name, "type": "dir", "target_path": str(target), "build": True}
    assert owner_api.post(f"{base}/", body, format="json").status_code == 202
    (created,) = run_jobs()
    assert created.status == Job.Status.SUCCEEDED, (created.error, created.log)
    agent_host.refresh_from_db()
    listed = {p["name"]: p for p in owner_api.get(f"{base}/").json()}
    assert listed[pool_name]["active"] and listed[pool_name]["autostart"]

    make = {"name": "data.qcow2", "size": "2 GiB"}
    assert owner_api.post(f"{base}/{pool_name}/volumes/", make, format="json").status_code == 202
    (made,) = run_jobs()
    assert made.status == Job.Status.SUCCEEDED, (made.error, made.log)
    record = Volume.objects.get(host=agent_host, path=str(target / "data.qcow2"))
    assert record.origin == Volume.Origin.POOL and record.team is None
    page = owner_api.get(f"{base}/{pool_name}/volumes/").json()
    (volume,) = page["results"]
    assert (volume["name"], volume["capacity_bytes"], volume["orphan"]) == ("data.qcow2", 2 << 30, False)

    grow = owner_api.post(f"{base}/{pool_name}/volumes/data.qcow2/resize/", {"size": "3 GiB"}, format="json")
    assert grow.status_code == 202
    copy = owner_api.post(
        f"{base}/{pool_name}/volumes/data.qcow2/clone/", {"name": "copy.qcow2"}, format="json"
    )
    assert copy.status_code == 202
    assert_succeeded(run_jobs())
    sizes = {
        v["name"]: v["capacity_bytes"]
        for v in owner_api.get(f"{base}/{pool_name}/volumes/").json()["results"]
    }
    assert sizes == {"data.qcow2": 3 << 30, "copy.qcow2": 3 << 30}

    # A domain that had copy.qcow2 is deleted, keeping its disk: an orphan, removed in bulk.
    gone = Domain.objects.create(name="old1", host=agent_host, state=Domain.State.SHUTOFF)
    Volume.objects.filter(path=str(target / "copy.qcow2")).update(
        origin=Volume.Origin.DOMAIN, domain=gone, domain_name="old1"
    )
    from domains.services import domain_forget

    domain_forget(domain=gone)
    rows = {v["name"]: v for v in owner_api.get(f"{base}/{pool_name}/volumes/").json()["results"]}
    assert rows["copy.qcow2"]["orphan"] and rows["copy.qcow2"]["formerly"] == "old1"
    assert owner_api.post(f"/api/v1/hosts/{agent_host.pk}/orphans/", {}, format="json").status_code == 202
    (cleaned,) = run_jobs()
    assert cleaned.status == Job.Status.SUCCEEDED and cleaned.result["deleted"] == [
        str(target / "copy.qcow2")
    ]
    assert owner_api.delete(f"{base}/{pool_name}/volumes/data.qcow2/").status_code == 202
    assert owner_api.post(f"{base}/{pool_name}/stop/").status_code == 202
    assert_succeeded(run_jobs())
    assert not Volume.objects.filter(host=agent_host).exists()
    delete = owner_api.delete(f"{base}/{pool_name}/?delete_storage=true")
    assert delete.status_code == 202
    (deleted,) = run_jobs()
    assert deleted.status == Job.Status.SUCCEEDED, (deleted.error, deleted.log)
    assert not target.exists()
    assert pool_name not in {p["name"] for p in owner_api.get(f"{base}/").json()}
    kinds = list(
        AuditEvent.objects.filter(action__regex=r"^(pool|volume)\.").values_list("action", flat=True)
    )
    made = ["pool.create", "volume.create", "volume.resize", "volume.clone", "volume.orphans"]
    assert sorted(kinds) == sorted([*made, "volume.delete", "pool.stop", "pool.delete"])


@pytest.mark.libvirt
def test_a_storage_job_whose_last_reading_fails_still_says_what_it_did(
    owner_api: APIClient, agent_host: Host, tmp_path: Path, pool_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool is made; the agent then cannot answer the job's closing read of the host's
    pools: the job succeeds all the same (the agent's own report brings the pools later)."""
    from agent.client import AgentClient, AgentUnreachable

    async def unreachable(self: AgentClient) -> None:
        raise AgentUnreachable(0, "unreachable", "connection refused")

    monkeypatch.setattr(AgentClient, "host", unreachable)
    body = {"name": pool_name, "type": "dir", "target_path": str(tmp_path / "p"), "build": True}
    assert owner_api.post(f"/api/v1/hosts/{agent_host.pk}/pools/", body, format="json").status_code == 202
    assert_succeeded(run_jobs())
    assert (tmp_path / "p").is_dir()
