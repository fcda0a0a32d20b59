"""A create that fails on the host is shown as such, with the reason, and retried from the page:
a real host (make run's stack), a real guest once the ISO is there, a real browser."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, POOL, Stack, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.libvirt]


def test_a_failed_create_shows_why_and_is_retried_from_its_page(
    stack: Stack, guest_iso: str, domain_name: str, browser: Any
) -> None:
    missing = POOL / f"{domain_name}-installer.iso"  # in the pool, but not there (yet)
    body = {
        "name": domain_name,
        "host": stack.host_id,
        "memory_mib": 128,
        "boot": {"kind": "iso", "iso": str(missing)},
    }
    created = stack.api("POST", "/api/v1/domains/", json=body)
    assert created.status_code == 202, created.text
    domain_id = created.json()["domain"]["id"]
    job = stack.wait_job(created.json()["job"])
    assert job["status"] == "failed" and missing.name in job["error"], job
    shown = stack.api("GET", f"/api/v1/domains/{domain_id}/").json()
    assert shown["state"] == "failed" and missing.name in shown["failure"]

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        sign_in(page, stack)
        page.goto(f"{stack.url}/domains/{domain_id}/")
        banner = page.locator("#domain-failure")
        banner.wait_for(state="visible")
        assert missing.name in banner.inner_text()
        assert page.locator('[data-domain-state]:has-text("Create failed")').count() == 1
        assert page.locator('button[data-action="start"]').is_disabled()  # retry or delete only
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "create-failed.png"), full_page=True)

        shutil.copy2(guest_iso, missing)  # what the person fixes before retrying
        missing.chmod(0o644)
        page.click('button[data-action="retry-create"]')
        # Live, without a reload: defined on the host, the banner and the retry form gone.
        page.wait_for_selector('[data-domain-state]:has-text("Shut off")', timeout=60_000)
        banner.wait_for(state="hidden")
        assert page.locator('form[data-when-form="failed"]').is_hidden()
        assert not page.locator('button[data-action="start"]').is_disabled()
    finally:
        page.close()
        Path(missing).unlink(missing_ok=True)
    shown = stack.api("GET", f"/api/v1/domains/{domain_id}/").json()
    assert shown["state"] == "shutoff" and shown["failure"] == ""
    jobs = stack.api("GET", "/api/v1/jobs/", params={"domain": domain_id}).json()["results"]
    assert sorted(j["status"] for j in jobs if j["kind"] == "domain.create") == ["failed", "succeeded"]
