from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.jobs.models import Job
from domains.models import Domain
from hosts.models import Host
from tests.conftest import grant, host_facts

pytestmark = pytest.mark.django_db

POOL = "/var/lib/libvirt/images"


def body(host: Host, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "web1",
        "host": host.pk,
        "vcpus": 1,
        "memory_mib": 256,
        "disks": [{"size_gib": 1}],
        "boot": {
            "kernel": f"{POOL}/vmlinuz",
            "initrd": f"{POOL}/initrd.img",
            "cmdline": "console=ttyS0",
        },
    }
    data.update(overrides)
    return data


def test_create_answers_202_with_domain_and_queued_job(api: APIClient, host: Host) -> None:
    response = api.post("/api/v1/domains/", body(host), format="json")
    assert response.status_code == 202, response.content
    data = response.json()
    assert data["domain"]["name"] == "web1"
    assert data["domain"]["state"] == "new"
    assert data["job"]["status"] == "queued"
    assert data["job"]["kind"] == "domain.create"
    domain = Domain.objects.get(pk=data["domain"]["id"])
    assert domain.spec["boot"]["kernel"] == f"{POOL}/vmlinuz"
    assert domain.spec["uuid"] == str(domain.uuid)
    assert Job.objects.get(pk=data["job"]["id"]).domain == domain


def test_create_with_iso_boot(api: APIClient, host: Host) -> None:
    response = api.post("/api/v1/domains/", body(host, boot={"iso": f"{POOL}/x.iso"}), format="json")
    assert response.status_code == 202, response.content
    assert response.json()["domain"]["spec"]["boot"] == {"kind": "iso", "iso": f"{POOL}/x.iso"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": "<domain>"}, "name"),
        ({"name": "x" * 64}, "name"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": "lots"}, "memory_mib"),
        ({"memory_mib": 10**12}, "memory_mib"),
        ({"disks": [{"size_gib": -1}]}, "disks.0.size_gib"),
        ({"disks": [{"size_gib": 1, "pool": "../etc"}]}, "disks.0.pool"),
        ({"boot": {"kernel": f"{POOL}/../../../etc/shadow"}}, "boot.kernel"),
        ({"boot": {"kernel": "/etc/passwd"}}, "boot.kernel"),
        ({"boot": {"kernel": "../vmlinuz"}}, "boot.kernel"),
        ({"boot": {"iso": "/tmp/x.iso"}}, "boot.iso"),
        ({"boot": {"iso": f"{POOL}/a.iso", "extra": 1}}, "boot.extra"),
        ({"boot": "cdrom"}, "boot"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_create_refuses_bad_input_naming_the_field(
    api: APIClient, host: Host, overrides: dict[str, Any], field: str
) -> None:
    response = api.post("/api/v1/domains/", body(host, **overrides), format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"], response.json()
    assert not Domain.objects.exists()
    assert not Job.objects.exists()


def test_create_refuses_unknown_host(api: APIClient, host: Host) -> None:
    data = body(host)
    data["host"] = host.pk + 100
    response = api.post("/api/v1/domains/", data, format="json")
    assert response.status_code == 400
    assert "host" in response.json()["fields"]


def test_create_refuses_duplicate_name_on_host(api: APIClient, host: Host) -> None:
    assert api.post("/api/v1/domains/", body(host), format="json").status_code == 202
    response = api.post("/api/v1/domains/", body(host), format="json")
    assert response.status_code == 400
    assert "already exists" in response.json()["fields"]["name"][0]


def test_hostile_cmdline_is_stored_as_data(api: APIClient, host: Host) -> None:
    cmdline = "console=ttyS0 </cmdline><devices>&amp; ' \" ünïcode"
    boot = {"kernel": f"{POOL}/vmlinuz", "cmdline": cmdline}
    response = api.post("/api/v1/domains/", body(host, boot=boot), format="json")
    assert response.status_code == 202
    assert Domain.objects.get().spec["boot"]["cmdline"] == cmdline


def test_power_actions_answer_202_with_job(api: APIClient, host: Host) -> None:
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF)
    for action, kind in [
        ("start", "domain.start"),
        ("shutdown", "domain.shutdown"),
        ("force-off", "domain.force_off"),
        ("reboot", "domain.reboot"),
        ("pause", "domain.pause"),
        ("resume", "domain.resume"),
    ]:
        response = api.post(f"/api/v1/domains/{domain.pk}/{action}/")
        assert response.status_code == 202, response.content
        assert response.json()["job"]["kind"] == kind


def test_delete_keeps_disks_unless_asked(api: APIClient, host: Host) -> None:
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF)
    job = api.delete(f"/api/v1/domains/{domain.pk}/").json()["job"]
    assert job["params"] == {"delete_disks": False}
    job = api.delete(f"/api/v1/domains/{domain.pk}/?delete_disks=true").json()["job"]
    assert job["params"] == {"delete_disks": True}


def test_unknown_domain_is_404_problem(api: APIClient, host: Host) -> None:
    response = api.post("/api/v1/domains/999/start/")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_job_detail(api: APIClient, host: Host) -> None:
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF)
    job_id = api.post(f"/api/v1/domains/{domain.pk}/start/").json()["job"]["id"]
    data = api.get(f"/api/v1/jobs/{job_id}/").json()
    assert data["status"] == "queued"
    assert {"progress", "log", "error", "step"} <= set(data)


def test_autostart_is_a_job_for_those_who_may_edit(
    api: APIClient, host: Host, django_user_model: Any
) -> None:
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF)
    response = api.post(f"/api/v1/domains/{domain.pk}/autostart/", {"enabled": True}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["job"]["kind"] == "domain.autostart"
    assert response.json()["job"]["params"] == {"enabled": True}
    bad = api.post(f"/api/v1/domains/{domain.pk}/autostart/", {"enabled": "perhaps"}, format="json")
    assert bad.status_code == 400 and "enabled" in bad.content.decode()
    viewer = django_user_model.objects.create_user("vi", password="pw-vi-123456")
    grant(viewer, "Viewer")
    client = APIClient()
    client.force_authenticate(viewer)
    denied = client.post(f"/api/v1/domains/{domain.pk}/autostart/", {"enabled": True}, format="json")
    assert denied.status_code == 403 and "domain.edit" in denied.json()["detail"]


def test_resources_are_checked_then_queued(api: APIClient, host: Host) -> None:
    host.facts = host_facts()
    host.save()
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.RUNNING, memory_mib=512, vcpus=1)
    url = f"/api/v1/domains/{domain.pk}/resources/"
    for bad, field in [
        ({"memory_mib": "9 GiB"}, "memory_mib"),
        ({"vcpus": 5}, "vcpus"),
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": 1.5}, "vcpus"),
        ({"memory_mib": "lots"}, "memory_mib"),
        ({"colour": 1}, "colour"),
        ({}, "non_field_errors"),
    ]:
        response = api.post(url, bad, format="json")
        assert response.status_code == 400 and field in response.json()["fields"], (bad, response.json())
    response = api.post(url, {"memory_mib": "1 GiB", "vcpus": 2}, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"]["id"])
    assert job.kind == "domain.resources" and job.params == {"memory_mib": 1024, "vcpus": 2}


def test_rename_only_while_shut_off_and_to_a_free_name(api: APIClient, host: Host) -> None:
    domain = Domain.objects.create(name="old", host=host, state=Domain.State.RUNNING)
    Domain.objects.create(name="taken", host=host, state=Domain.State.SHUTOFF)
    url = f"/api/v1/domains/{domain.pk}/rename/"
    assert api.post(url, {"name": "new"}, format="json").status_code == 409
    domain.state = Domain.State.SHUTOFF
    domain.save()
    assert "name" in api.post(url, {"name": "taken"}, format="json").json()["fields"]
    assert "name" in api.post(url, {"name": "bad name/.."}, format="json").json()["fields"]
    response = api.post(url, {"name": "new"}, format="json")
    assert response.status_code == 202 and Job.objects.get(kind="domain.rename").params == {"name": "new"}


def test_create_with_host_auto_places_it(api: APIClient, host: Host) -> None:
    host.facts = host_facts(free_memory_mib=100)
    host.save()
    roomy = Host.objects.create(
        name="roomy", url="http://127.0.0.1:9", secret="x" * 32, state=Host.State.ONLINE, facts=host_facts()
    )
    response = api.post("/api/v1/domains/", {**body(host), "host": "auto"}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["domain"]["host"] == roomy.pk


def test_host_auto_places_a_team_domain_on_its_reserved_host(api: APIClient, user: Any, host: Host) -> None:
    from console.access.models import Team

    team = Team.objects.create(name="ops")
    host.facts = host_facts(free_memory_mib=6000)
    host.save()
    host.teams.add(team)  # reserved to ops
    Host.objects.create(  # less free memory, shared by the whole site
        name="shared",
        url="http://127.0.0.1:9",
        secret="x" * 32,
        state=Host.State.ONLINE,
        facts=host_facts(free_memory_mib=2000),
    )
    reserved = Host.objects.create(  # the most free memory, reserved to another team
        name="theirs",
        url="http://127.0.0.1:10",
        secret="x" * 32,
        state=Host.State.ONLINE,
        facts=host_facts(free_memory_mib=8000),
    )
    reserved.teams.add(Team.objects.create(name="others"))
    response = api.post("/api/v1/domains/", {**body(host), "host": "auto", "team": team.pk}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["domain"]["host_name"] == "h1"  # ops' own host, not another team's
