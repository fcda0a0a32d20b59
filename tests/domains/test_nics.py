"""A domain's network cards through the console: who may change them, what is refused before any
job starts (a network the host lacks or that is not running, a MAC another guest has on that
network, a MAC changed on a running guest), the job and audit row each change makes, and the
domain page's forms. The agent's side is tests/agent/test_nics*.py; a card hot-plugged into a real
guest and unplugged again is tests/e2e/test_networks.py."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.audit.models import AuditEvent
from console.jobs.models import Job
from domains.models import Domain
from hosts.models import Host
from tests.console.test_access_matrix import client_for

pytestmark = pytest.mark.django_db

MAC = "52:54:00:aa:00:01"


def nic(mac: str, name: str = "default", source: str = "network", **extra: Any) -> dict[str, Any]:
    return {
        "mac": mac,
        "source": source,
        "name": name,
        "model": "virtio",
        "target": None,
        "link": "up",
        **extra,
    }


@pytest.fixture
def wired(host: Host) -> Host:
    networks = [
        {"name": "default", "active": True, "forward": "nat", "bridge": "virbr0"},
        {"name": "lab", "active": False, "forward": "isolated", "bridge": "virbr9"},
    ]
    host.facts = {**host.facts, "resources": {"networks": networks, "bridges": ["br0"], "pools": []}}
    host.save()
    return host


@pytest.fixture
def web(wired: Host) -> Domain:
    return Domain.objects.create(name="web1", host=wired, state=Domain.State.RUNNING, nics=[nic(MAC)])


@pytest.fixture
def api(admin_user: Any) -> APIClient:
    return client_for(admin_user)


def test_attach_is_a_job_with_a_new_mac_and_an_audit_row(api: APIClient, web: Domain) -> None:
    response = api.post(f"/api/v1/domains/{web.pk}/nics/", {"name": "default"}, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"]["id"])
    card = job.params["nic"]
    assert (job.kind, card["source"], card["name"]) == ("domain.nic.attach", "network", "default")
    assert card["mac"].startswith("52:54:00:") and card["mac"] != MAC  # chosen now: a retry keeps it
    assert AuditEvent.objects.get(action="domain.nic.attach").changes["nic"]["mac"] == card["mac"]
    bridged = api.post(
        f"/api/v1/domains/{web.pk}/nics/",
        {"source": "bridge", "name": "br0", "model": "e1000"},
        format="json",
    )
    assert bridged.status_code == 202 and Job.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": "nowhere"}, "name", "has no virtual network 'nowhere' (networks: default, lab)"),
        ({"name": "lab"}, "name", "virtual network 'lab' is not running on h1: start it"),
        ({"source": "bridge", "name": "br7"}, "name", "has no bridge 'br7'"),
        ({"name": "default", "mac": MAC}, "mac", f"web1 already has a card with {MAC}"),
        ({"name": "default", "mac": "01:00:5e:00:00:01"}, "nic.mac", "unicast"),
        ({"name": "default", "model": "tulip"}, "nic.model", "virtio"),
    ],
)
def test_a_bad_card_is_refused_by_field(
    api: APIClient, web: Domain, body: dict[str, Any], field: str, words: str
) -> None:
    response = api.post(f"/api/v1/domains/{web.pk}/nics/", body, format="json")
    assert response.status_code == 400, response.content
    assert words in " ".join(response.json()["fields"][field]), response.json()
    assert not Job.objects.exists()


def test_a_mac_another_guest_has_on_that_network_is_refused(api: APIClient, web: Domain, wired: Host) -> None:
    Domain.objects.create(name="db1", host=wired, state=Domain.State.SHUTOFF, nics=[nic("52:54:00:aa:00:02")])
    taken = api.post(
        f"/api/v1/domains/{web.pk}/nics/", {"name": "default", "mac": "52:54:00:aa:00:02"}, format="json"
    )
    assert taken.status_code == 400
    assert "52:54:00:aa:00:02 is already db1's on default" in str(taken.json()["fields"]["mac"])
    # On another network the same MAC harms nobody.
    other = api.post(
        f"/api/v1/domains/{web.pk}/nics/",
        {"source": "bridge", "name": "br0", "mac": "52:54:00:aa:00:02"},
        format="json",
    )
    assert other.status_code == 202


def test_changes_and_detach(api: APIClient, web: Domain) -> None:
    base = f"/api/v1/domains/{web.pk}/nics/{MAC}"
    assert api.patch(f"{base}/", {"link": "down"}, format="json").status_code == 202
    moved = api.patch(f"{base}/", {"source": "bridge", "name": "br0"}, format="json")
    assert moved.status_code == 202
    assert Job.objects.get(pk=moved.json()["job"]["id"]).params == {
        "card": MAC,
        "source": "bridge",
        "name": "br0",
    }
    running = api.patch(f"{base}/", {"mac": "52:54:00:aa:00:09"}, format="json")
    assert running.status_code == 409 and "only while it is shut off" in running.json()["detail"]
    nothing = api.patch(f"{base}/", {}, format="json")
    assert nothing.status_code == 400 and "say what to change" in str(nothing.json()["fields"])
    half = api.patch(f"{base}/", {"name": "default"}, format="json")
    assert half.status_code == 400 and "source" in half.json()["fields"]
    assert api.post(f"{base}/detach/").status_code == 202
    assert api.post(f"/api/v1/domains/{web.pk}/nics/52:54:00:ff:ff:ff/detach/").status_code == 404
    assert [j.kind for j in Job.objects.order_by("pk")] == [
        "domain.nic.change",
        "domain.nic.change",
        "domain.nic.detach",
    ]
    web.state = Domain.State.SHUTOFF
    web.save()
    renamed = api.patch(f"{base}/", {"mac": "52-54-00-AA-00-09"}, format="json")
    assert renamed.status_code == 202
    assert Job.objects.get(pk=renamed.json()["job"]["id"]).params == {"card": MAC, "mac": "52:54:00:aa:00:09"}


def test_who_may_change_cards(web: Domain, django_user_model: Any) -> None:
    from tests.conftest import grant

    viewer = django_user_model.objects.create_user("vera", password="x-pass-1234")
    grant(viewer, "Viewer")
    api = client_for(viewer)
    assert api.post(f"/api/v1/domains/{web.pk}/nics/", {"name": "default"}, format="json").status_code == 403
    assert api.post(f"/api/v1/domains/{web.pk}/nics/{MAC}/detach/").status_code == 403
    assert not Job.objects.exists()


def test_the_domain_page_changes_cards(web: Domain, admin_client: Any) -> None:
    web.nics = [nic(MAC, pending="change"), nic("52:54:00:aa:00:03", "br0", "bridge", link="down")]
    web.save()
    page = admin_client.get(f"/domains/{web.pk}/").content.decode()
    section = page[
        page.index('<section id="nics"') : page.index("</section>", page.index('<section id="nics"'))
    ]
    assert "changes at the next boot" in section and "Link up" in section and "Add a network card" in section
    assert '<option value="network:lab">network lab (inactive)</option>' in section
    assert "Set MAC" not in section  # it runs
    response = admin_client.post(f"/domains/{web.pk}/nics/", {"connect": "network:default"}, follow=True)
    assert "Adding a card" in response.content.decode()
    admin_client.post(f"/domains/{web.pk}/nics/{MAC}/link/", {"link": "down"})
    admin_client.post(f"/domains/{web.pk}/nics/{MAC}/connect/", {"connect": "bridge:br0"})
    refused = admin_client.post(
        f"/domains/{web.pk}/nics/{MAC}/mac/", {"new_mac": "52:54:00:aa:00:0a"}, follow=True
    )
    assert "only while it is shut off" in refused.content.decode()
    admin_client.post(f"/domains/{web.pk}/nics/{MAC}/detach/")
    assert [j.kind for j in Job.objects.order_by("pk")] == [
        "domain.nic.attach",
        "domain.nic.change",
        "domain.nic.change",
        "domain.nic.detach",
    ]
    assert Job.objects.filter(kind="domain.nic.change").order_by("pk").first().params == {
        "card": MAC,
        "link": "down",
    }
