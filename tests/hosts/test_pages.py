"""The host pages: list, add (pairing form), detail with capabilities, and the actions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from agent.capabilities import parse_host_capabilities
from console.jobs.models import Job
from hosts.models import Host
from tests.conftest import grant, quiet_login

pytestmark = pytest.mark.django_db
FIXTURES = Path(__file__).resolve().parents[1] / "agent" / "fixtures" / "capabilities"


@pytest.fixture
def browser(user: Any) -> Client:
    client = Client()
    quiet_login(client, user)
    return client


@pytest.fixture
def xen(db: None) -> Host:
    caps = parse_host_capabilities(
        (FIXTURES / "xen-libxl-host-capabilities.xml").read_text(),
        driver="Xen",
        accel="xen",
        domcaps_xml=(FIXTURES / "xen-libxl-domain-capabilities-xenfv.xml").read_text(),
    )
    facts = {
        "hypervisor": "xen",
        "cpus": 8,
        "memory_mib": 32768,
        "free_memory_mib": 30000,
        "capabilities": json.loads(caps.model_dump_json()),
        "resources": {
            "pools": [
                {
                    "name": "vg0",
                    "type": "logical",
                    "active": True,
                    "path": "/dev/vg0",
                    "capacity_bytes": 500 * 2**30,
                    "allocation_bytes": 0,
                    "available_bytes": 400 * 2**30,
                },
            ],
            "networks": [{"name": "default", "active": True, "forward": "nat", "bridge": "virbr0"}],
            "bridges": ["xenbr0"],
        },
    }
    return Host.objects.create(
        name="xen1",
        url="https://xen1.example.org:8901",
        secret="s" * 40,
        fingerprint="ab" * 32,
        state=Host.State.ONLINE,
        facts=facts,
    )


def test_detail_shows_what_a_xen_host_offers(browser: Client, xen: Host) -> None:
    page = browser.get(f"/hosts/{xen.pk}/").content.decode()
    assert "Paravirtualisation (PV)" in page and "PVH" in page and "hardware-assisted" in page
    assert "SHA256:AB:AB" in page and "TLS, certificate pinned" in page
    assert "vg0" in page and "400.0\xa0GiB free" in page and "xenbr0" in page and "virbr0" in page
    assert "Rotate secret" in page and "Enter maintenance" in page


def test_a_loopback_host_says_it_skips_tls(browser: Client, host: Host) -> None:
    assert "loopback, no TLS" in browser.get("/hosts/").content.decode()
    page = browser.get(f"/hosts/{host.pk}/").content.decode()
    assert "loopback, no TLS" in page and "Rotate secret" not in page


def test_maintenance_from_the_page(browser: Client, xen: Host) -> None:
    response = browser.post(f"/hosts/{xen.pk}/maintenance/", {"on": "1", "reason": "disk swap"}, follow=True)
    assert "in maintenance" in response.content.decode() and "disk swap" in response.content.decode()
    xen.refresh_from_db()
    assert xen.maintenance and xen.maintenance_reason == "disk swap"
    assert "maintenance" in browser.get("/hosts/").content.decode()
    browser.post(f"/hosts/{xen.pk}/maintenance/", {"on": "0"})
    xen.refresh_from_db()
    assert not xen.maintenance


def test_add_page_names_the_field_at_fault(browser: Client) -> None:
    assert "Pairing code" in browser.get("/hosts/add/").content.decode()
    response = browser.post(
        "/hosts/add/", {"name": "kvm9", "url": "http://192.0.2.1:8901", "pairing_code": "2222-3333-4444"}
    )
    assert response.status_code == 400
    assert "pairing needs https://" in response.content.decode()
    assert 'value="kvm9"' in response.content.decode()  # nothing typed is lost


def test_viewers_see_hosts_but_no_actions(xen: Host, django_user_model: Any) -> None:
    viewer = django_user_model.objects.create_user("vi", password="pw-vi-123456")
    grant(viewer, "Viewer")
    client = Client()
    quiet_login(client, viewer)
    page = client.get(f"/hosts/{xen.pk}/").content.decode()
    assert (
        "Paravirtualisation" in page
        and "Enter maintenance" not in page
        and "Add host" not in client.get("/hosts/").content.decode()
    )
    response = client.post(f"/hosts/{xen.pk}/maintenance/", {"on": "1"}, follow=True)
    assert "host.manage" in response.content.decode()
    xen.refresh_from_db()
    assert not xen.maintenance
    response = client.post(f"/hosts/{xen.pk}/refresh/", follow=True)
    assert "host.manage" in response.content.decode() and not Job.objects.exists()


def test_a_host_out_of_reach_is_404(xen: Host, django_user_model: Any) -> None:
    nobody = django_user_model.objects.create_user("no", password="pw-no-123456")
    client = Client()
    quiet_login(client, nobody)
    assert client.get(f"/hosts/{xen.pk}/").status_code == 404
    assert client.post(f"/hosts/{xen.pk}/remove/").status_code == 404
    assert Host.objects.filter(pk=xen.pk).exists()
