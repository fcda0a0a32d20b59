"""A host's volumes on its page, under the Content-Security-Policy: the admin puts a real domain's
disk in the site's library with the row's form and sees it listed as such (a real host, make
run's stack; a real browser)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, Stack, kernel_guest_body, sign_in, watched_context

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.libvirt]


def _recorded_volume(stack: Stack, name: str, timeout: float = 30) -> dict[str, Any]:
    """The volume record of the domain's disk, once its host has reported the disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = stack.api("GET", "/api/v1/volumes/", params={"host": stack.host_id}).json()["results"]
        mine = [v for v in rows if v["name"].startswith(f"{name}-")]
        if mine:
            return mine[0]
        time.sleep(0.3)
    raise AssertionError(f"no volume of {name} recorded:\n{stack.log.read_text()[-3000:]}")


def test_a_volume_is_put_in_the_library_from_the_host_page(
    stack: Stack, guest_files: dict[str, str], domain_name: str, browser: Any
) -> None:
    body = kernel_guest_body(stack, guest_files, domain_name, disks=[{"size_gib": "64 MiB"}])
    created = stack.api("POST", "/api/v1/domains/", json=body)
    assert created.status_code == 202, created.text
    assert stack.wait_job(created.json()["job"])["status"] == "succeeded"
    volume = _recorded_volume(stack, domain_name)
    assert volume["library"] is False and volume["domain"]["name"] == domain_name

    context, watch = watched_context(browser, viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        sign_in(page, stack)
        page.goto(f"{stack.url}/hosts/{stack.host_id}/")
        row = page.locator(f'tr[data-volume="{volume["id"]}"]')
        assert row.locator("[data-volume-library]").inner_text() == "—"
        row.locator("input[name=library]").check()
        with page.expect_navigation():
            row.locator("button:has-text('Save')").click()
        assert f"Saved who may use {volume['path']}." in page.inner_text(".flash.success")
        row = page.locator(f'tr[data-volume="{volume["id"]}"]')  # the page after the redirect
        assert row.locator("[data-volume-library] .badge").inner_text() == "library"
        assert row.locator("input[name=library]").is_checked()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "host-volumes.png"), full_page=True)
        page.wait_for_timeout(500)  # late reports
        watch.assert_clean()
    finally:
        context.close()
    shown = stack.api("GET", f"/api/v1/volumes/{volume['id']}/").json()
    assert shown["library"] is True and shown["domain"]["name"] == domain_name
