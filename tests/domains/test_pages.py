from __future__ import annotations

from typing import Any

import pytest

from domains.models import Domain
from hosts.models import Host

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def test_overview_lists_hosts_and_domains(browser: Any, host: Host) -> None:
    Domain.objects.create(name="web1", host=host, state=Domain.State.RUNNING)
    page = browser.get("/").content.decode()
    assert "h1" in page and "web1" in page and 'data-domain-state="' in page


def test_new_domain_form_shows_field_errors_and_keeps_input(browser: Any, host: Host) -> None:
    response = browser.post(
        "/domains/new/",
        {
            "name": "ok-name",
            "host": host.pk,
            "vcpus": "1",
            "memory_mib": "256",
            "disk_gib": "1",
            "boot_kind": "kernel",
            "kernel": "/etc/passwd",
        },
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "boot.kernel" in page and "storage pool" in page
    assert 'value="ok-name"' in page
    assert not Domain.objects.exists()


def test_new_domain_form_creates_and_redirects(browser: Any, host: Host) -> None:
    response = browser.post(
        "/domains/new/",
        {
            "name": "web2",
            "host": host.pk,
            "vcpus": "2",
            "memory_mib": "512",
            "disk_gib": "2",
            "boot_kind": "iso",
            "iso": "/var/lib/libvirt/images/install.iso",
            "start": "on",
        },
    )
    domain = Domain.objects.get(name="web2")
    assert response.status_code == 302 and response["Location"] == f"/domains/{domain.pk}/"
    assert domain.spec["disks"] == [{"size_gib": 2.0, "format": "qcow2", "pool": "default"}]
    assert domain.jobs.get().params == {"start": True}


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
