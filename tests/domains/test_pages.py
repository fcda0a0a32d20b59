from __future__ import annotations

from typing import Any

import pytest

from domains.models import Domain
from hosts.models import Host
from tests.conftest import host_facts

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def test_overview_lists_hosts_and_domains(browser: Any, host: Host) -> None:
    Domain.objects.create(name="web1", host=host, state=Domain.State.RUNNING)
    page = browser.get("/").content.decode()
    assert "h1" in page and "web1" in page and 'data-domain-state="' in page


def _wizard_body(target: Host, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "web2",
        "host": target.pk,
        "mode": "hvm",
        "os": "debian12",
        "boot": {"kind": "iso", "iso": "/var/lib/libvirt/images/install.iso"},
        "disks": [{"size_gib": "2 GiB", "allocation": "sparse"}],
        "nics": [],
        "memory_mib": "512 MiB",
        "vcpus": 2,
        "graphics": True,
        "serial": True,
        "autostart": False,
        "start": True,
    }
    body.update(overrides)
    return body


def test_wizard_page_offers_the_steps_and_the_hosts(browser: Any, host: Host) -> None:
    page = browser.get("/domains/new/").content.decode()
    for step in (
        "Name and host",
        "Virtualisation",
        "Install from",
        "Operating system",
        "Disks",
        "Network",
        "Memory and CPUs",
        "Review",
    ):
        assert step in page
    assert 'id="wizard-data"' in page and '"name": "h1"' in page and "debian12" in page
    assert "Place automatically" in page


def test_wizard_check_shows_only_the_errors_of_steps_reached(browser: Any, host: Host) -> None:
    def check(step: int, **overrides: Any) -> Any:
        body = {**_wizard_body(host, **overrides), "step": step}
        return browser.post("/domains/new/check/", body, content_type="application/json").json()

    assert list(check(1, name="bad name")["errors"]) == ["name"]
    outside = {"kind": "iso", "iso": "/etc/passwd"}
    assert check(1, boot=outside) == {"ok": True, "errors": {}, "host": {"id": host.pk, "name": "h1"}}
    third = check(3, boot=outside)
    assert third["ok"] is False and list(third["errors"]) == ["boot.iso"]
    assert "storage pool" in third["errors"]["boot.iso"][0]
    assert not Domain.objects.exists()


def test_wizard_review_returns_the_spec_and_the_xml(browser: Any, host: Host) -> None:
    answer = browser.post(
        "/domains/new/check/", {**_wizard_body(host), "step": 8}, content_type="application/json"
    ).json()
    assert answer["ok"] is True and answer["host"]["name"] == "h1"
    assert answer["spec"]["memory_mib"] == 512 and answer["spec"]["disks"][0]["bus"] == "virtio"
    assert "<domain" in answer["xml"] and "install.iso" in answer["xml"]
    assert not Domain.objects.exists()  # checking defines nothing


def test_wizard_creates_and_answers_where_to_go(browser: Any, host: Host) -> None:
    response = browser.post("/domains/new/", _wizard_body(host), content_type="application/json")
    assert response.status_code == 202, response.content
    domain = Domain.objects.get(name="web2")
    assert response.json()["redirect"] == f"/domains/{domain.pk}/"
    assert domain.spec["disks"][0]["size_gib"] == 2.0 and domain.spec["graphics"] is True
    assert domain.jobs.get().params == {"start": True}


def test_wizard_create_refuses_with_the_fields(browser: Any, host: Host) -> None:
    response = browser.post(
        "/domains/new/", _wizard_body(host, memory_mib="lots"), content_type="application/json"
    )
    assert response.status_code == 400 and "memory_mib" in response.json()["errors"]
    assert not Domain.objects.exists()


def test_wizard_places_automatically_on_the_host_with_most_free_memory(browser: Any, host: Host) -> None:
    facts = host_facts(free_memory_mib=1000)
    small = Host.objects.create(
        name="small", url="http://127.0.0.1:3", secret="x" * 32, state=Host.State.ONLINE, facts=facts
    )
    big = Host.objects.create(
        name="big",
        url="http://127.0.0.1:4",
        secret="x" * 32,
        state=Host.State.ONLINE,
        facts={**facts, "free_memory_mib": 6000},
    )
    Host.objects.create(
        name="busy",
        url="http://127.0.0.1:5",
        secret="x" * 32,
        state=Host.State.ONLINE,
        facts={**facts, "free_memory_mib": 9000},
        maintenance=True,
    )
    response = browser.post("/domains/new/", _wizard_body(host, host="auto"), content_type="application/json")
    assert response.status_code == 202, response.content
    assert Domain.objects.get(name="web2").host == big
    too_big = _wizard_body(host, host="auto", name="huge", memory_mib="7000 MiB")
    refused = browser.post(
        "/domains/new/check/", {**too_big, "step": 1}, content_type="application/json"
    ).json()
    reasons = refused["errors"]["host"][0]
    assert (
        "big: only 6000 MiB free" in reasons and "busy: in maintenance" in reasons and small.name in reasons
    )


def test_domain_page_has_console_and_actions(browser: Any, host: Host) -> None:
    domain = Domain.objects.create(name="web3", host=host, state=Domain.State.RUNNING)
    page = browser.get(f"/domains/{domain.pk}/").content.decode()
    assert 'id="terminal"' in page and "vendor/xterm/lib/xterm.js" in page
    assert 'data-action="force-off"' in page


def test_unknown_domain_page_is_404(browser: Any) -> None:
    assert browser.get("/domains/12345/").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/static/vendor/xterm/lib/xterm.js",  # from the npm package
        "/static/vendor/xterm/css/xterm.css",
        "/static/vendor/xterm-addon-fit/lib/addon-fit.js",
        "/static/domus/domus.css",
        "/static/domus/live.js",
        "/static/domus/serial.js",
    ],
)
def test_static_files_are_served(browser: Any, path: str) -> None:
    assert browser.get(path).status_code == 200


def test_pages_enforce_permissions_too(client: Any, django_user_model: Any, host: Host) -> None:
    """The page's buttons go through the same services as the API: a Viewer cannot start."""
    from tests.conftest import grant

    domain = Domain.objects.create(name="web9", host=host, state=Domain.State.SHUTOFF)
    viewer = django_user_model.objects.create_user("vic", password="x-pass-1234")
    grant(viewer, "Viewer", domain)
    client.force_login(viewer)
    for action in ("start", "shutdown", "force-off", "delete"):
        client.post(f"/domains/{domain.pk}/{action}/")
    assert not domain.jobs.exists()
    page = client.get(f"/domains/{domain.pk}/", follow=True).content.decode()
    assert "web9" in page
    response = client.post(f"/domains/{domain.pk}/start/", follow=True)
    assert "domain.power" in response.content.decode()  # the page says what is missing


def test_domain_page_changes_resources_and_name(browser: Any, host: Host) -> None:
    domain = Domain.objects.create(name="web4", host=host, state=Domain.State.SHUTOFF, memory_mib=256)
    page = browser.get(f"/domains/{domain.pk}/").content.decode()
    assert 'data-action="resources"' in page and 'data-action="rename"' in page
    response = browser.post(f"/domains/{domain.pk}/resources/", {"memory_mib": "1 GiB", "vcpus": "2"})
    assert response.status_code == 302
    assert domain.jobs.get(kind="domain.resources").params == {"memory_mib": 1024, "vcpus": 2}
    browser.post(f"/domains/{domain.pk}/rename/", {"name": "web5"})
    assert domain.jobs.get(kind="domain.rename").params == {"name": "web5"}
    refused = browser.post(f"/domains/{domain.pk}/resources/", {"memory_mib": "lots"}, follow=True)
    assert "must be a whole number" in refused.content.decode()


def test_the_api_reports_the_disks_the_delete_confirmation_lists(browser: Any, host: Host) -> None:
    disks = [
        {"target": "vda", "device": "disk", "path": "/var/lib/libvirt/images/web6-disk0.qcow2"},
        {"target": "hda", "device": "cdrom", "path": "/var/lib/libvirt/images/install.iso"},
    ]
    domain = Domain.objects.create(name="web6", host=host, state=Domain.State.SHUTOFF, disks=disks)
    page = browser.get(f"/domains/{domain.pk}/").content.decode()
    assert 'id="delete-form"' in page and "domus/delete.js" in page
    assert browser.get(f"/api/v1/domains/{domain.pk}/").json()["disks"] == disks


def test_a_shutdown_the_guest_ignored_offers_force_off(browser: Any, host: Host) -> None:
    from console.jobs.events import job_event
    from console.jobs.models import Job

    domain = Domain.objects.create(name="web7", host=host, state=Domain.State.RUNNING)
    ignored = Job.objects.create(
        kind="domain.shutdown", host=host, domain=domain, status="failed", error="the guest ignored it"
    )
    started = Job.objects.create(kind="domain.start", host=host, domain=domain, status="failed")
    page = browser.get(f"/domains/{domain.pk}/").content.decode()
    assert f'data-force-off="{domain.pk}"' in page and page.count("data-force-off=") == 1
    assert job_event(ignored)["job"]["offer"] == "force-off" and job_event(started)["job"]["offer"] == ""


def test_serial_log_download_needs_the_console_and_says_when_the_host_is_away(
    browser: Any, host: Host, django_user_model: Any, client: Any
) -> None:
    from console.access.models import Grant, Role

    domain = Domain.objects.create(name="web8", host=host, state=Domain.State.RUNNING)
    # The host (127.0.0.1:1) does not answer: the page says so instead of failing.
    response = browser.get(f"/domains/{domain.pk}/serial.log", follow=True)
    assert response.redirect_chain[-1][0] == f"/domains/{domain.pk}/"
    assert "cannot be read" in response.content.decode()
    # Seeing a domain is not watching its console.
    looker = django_user_model.objects.create_user("looker", password="l-pass-1234")
    role = Role.objects.create(name="looks only", permissions=["domain.view"])
    Grant.objects.create(user=looker, role=role, scope=Grant.Scope.DOMAIN, domain=domain)
    client.force_login(looker)
    assert client.get(f"/domains/{domain.pk}/serial.log").status_code == 403
