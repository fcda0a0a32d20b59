"""A running guest's disks changed from its page, in a real browser: a new disk attached (the
guest sees it in /sys/block at once), grown (the guest sees the new size), a CD-ROM drive with an
ISO added, its disc changed and ejected, and the disk detached (gone from the guest); the table
follows each job without a reload and says what waits for the next boot."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS, POOL, Stack, kernel_guest_body, sign_in
from tests.e2e.test_browser import _terminal_count, _terminal_gets_more, _terminal_has

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.libvirt]


def _run(page: Any, command: str, expect_text: str, timeout: float = 30_000) -> None:
    """Type a shell command into the guest's serial console; wait for a new line with the text."""
    before = _terminal_count(page, expect_text)
    page.click("#terminal")
    page.keyboard.type(command)
    page.keyboard.press("Enter")
    _terminal_gets_more(page, expect_text, before, timeout)


def _jobs(stack: Stack, domain_id: int) -> list[tuple[str, str, str]]:
    """The domain's jobs as (kind, status, error): what a failed wait shows."""
    found = stack.api("GET", f"/api/v1/jobs/?domain={domain_id}").json().get("results", [])
    return [
        (j["kind"], j["status"], j.get("error", ""), j.get("result"), j.get("log", "")[-400:]) for j in found
    ]


def _submit(page: Any, form: Any) -> None:
    with page.expect_navigation():
        form.locator("button").first.click()


def test_disks_and_cds_of_a_running_guest_from_its_page(
    stack: Stack, guest_files: dict[str, str], guest_iso: str, domain_name: str, browser: Any
) -> None:
    created = stack.api("POST", "/api/v1/domains/", json=kernel_guest_body(stack, guest_files, domain_name))
    assert created.status_code == 202, created.text
    domain = created.json()["domain"]
    assert stack.wait_job(created.json()["job"])["status"] == "succeeded"
    started = stack.api("POST", f"/api/v1/domains/{domain['id']}/start/")
    assert stack.wait_job(started.json()["job"])["status"] == "succeeded"

    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.on("dialog", lambda dialog: dialog.accept())
    volume = ""
    try:
        sign_in(page, stack)
        page.goto(f"{stack.url}/domains/{domain['id']}/")
        _terminal_has(page, "guest#", 120_000)

        # A new 64 MiB disk, hot-plugged: listed once its job ends, seen by the guest.
        page.click("#attach summary")
        form = page.locator("#attach form")
        form.locator("select[name=kind]").select_option("new")
        form.locator("input[name=size]").fill("64 MiB")
        _submit(page, form)
        assert "Attaching a new" in page.inner_text(".flash.success")
        # The test guest boots from its kernel, with no disk: the new one is its first, vda.
        row = page.locator('tr[data-disk="vda"]')
        try:
            row.wait_for(timeout=60_000)
        except (PlaywrightTimeout, AssertionError) as exc:
            disks = stack.api("GET", f"/api/v1/domains/{domain['id']}/").json().get("disks")
            shown = page.inner_html("[data-domain-disks] table")
            raise AssertionError((_jobs(stack, domain["id"]), disks, shown)) from exc
        assert row.locator("[data-disk-pending]").count() == 0  # on the running guest now
        _run(page, "ls /sys/block", "vda")

        # Grown to 128 MiB: the running guest sees the new size (512-byte sectors).
        grow = row.locator("form[action$='/resize/']")
        grow.locator("input[name=size]").fill("128 MiB")
        _submit(page, grow)
        try:
            expect(page.locator('tr[data-disk="vda"] td').nth(3)).to_have_text("128.0\xa0MiB", timeout=60_000)
        except (PlaywrightTimeout, AssertionError) as exc:
            disks = stack.api("GET", f"/api/v1/domains/{domain['id']}/").json().get("disks")
            raise AssertionError((_jobs(stack, domain["id"])[:1], disks)) from exc
        _run(page, "cat /sys/block/vda/size", "262144")

        # A CD-ROM drive with the test ISO; then ejected and given the disc again.
        page.click("#attach summary")
        form = page.locator("#attach form")
        form.locator("select[name=kind]").select_option("cdrom")
        form.locator("select[name=iso]").select_option(guest_iso)
        _submit(page, form)
        cd = page.locator("tr[data-disk]:has-text('CD-ROM')").last
        cd.wait_for(timeout=60_000)
        target = cd.get_attribute("data-disk")
        assert target
        cd = page.locator(f'tr[data-disk="{target}"]')
        pending = cd.locator("[data-disk-pending]")
        if pending.count():  # SATA and IDE take no drive live: the page says when it comes
            assert pending.inner_text() == "attached from the next boot"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "domain-disks.png"), full_page=True)
            # ... which is now: off and on again, and the guest has the drive and its disc.
            for action, state in (("force-off", "shutoff"), ("start", "running")):
                done = stack.api("POST", f"/api/v1/domains/{domain['id']}/{action}/")
                assert stack.wait_job(done.json()["job"])["status"] == "succeeded"
                stack.wait_state(domain["id"], state)
            # (the host's report of the started domain may follow its job by a moment)
            deadline = time.monotonic() + 30
            page.reload()
            while cd.locator("[data-disk-pending]").count() and time.monotonic() < deadline:
                page.wait_for_timeout(1000)
                page.reload()
            assert cd.locator("[data-disk-pending]").count() == 0
            _terminal_has(page, "guest#", 120_000)
        expect(cd.locator("[data-disk-path]")).to_have_text(guest_iso)
        _run(page, "cat /sys/block/sr0/size", "32768")  # the test ISO's 16 MiB, in 512-byte sectors
        # Ejected, then the disc put back, live (the host's view: the guest's kernel only looks
        # at its tray when something opens the drive).
        _submit(page, cd.locator("form:has(button:has-text('Eject'))"))
        expect(page.locator(f'tr[data-disk="{target}"] [data-disk-path]')).to_have_text(
            "(empty)", timeout=60_000
        )
        media = page.locator(f'tr[data-disk="{target}"] form').first
        media.locator("select[name=path]").select_option(guest_iso)
        _submit(page, media)
        expect(page.locator(f'tr[data-disk="{target}"] [data-disk-path]')).to_have_text(
            guest_iso, timeout=60_000
        )

        # Detached: gone from the guest and the table; its volume is kept in the pool.
        volume = page.locator('tr[data-disk="vda"] [data-disk-path]').inner_text()
        _submit(page, page.locator('tr[data-disk="vda"] form[action$="/detach/"]'))
        page.locator('tr[data-disk="vda"]:not(:has([data-disk-pending]))').wait_for(
            state="detached", timeout=60_000
        )
        _run(page, "ls /sys/block; echo END-OF-LIST", "END-OF-LIST")
        listed = page.evaluate(
            "() => { const b = window.domusTerminal.buffer.active; const out = [];"
            " for (let i = Math.max(0, b.length - 6); i < b.length; i++) out.push(b.getLine(i).translateToString(true));"
            " return out.join('\\n'); }"
        )
        if not page.locator('tr[data-disk="vda"]').count():  # released by the guest, not pending
            assert "vda" not in listed.split("ls /sys/block")[-1], listed
        assert volume.startswith(str(POOL)) and subprocess.run(["test", "-e", volume]).returncode == 0
        audit = stack.api("GET", "/api/v1/audit/?action__startswith=domain.disk.").json()["results"]
        assert {e["action"] for e in audit} >= {
            "domain.disk.attach",
            "domain.disk.resize",
            "domain.disk.detach",
        }
    finally:
        page.close()
        stack.api("POST", f"/api/v1/domains/{domain['id']}/force-off/")
        if volume.startswith(f"{POOL}/{domain_name}"):  # the detached disk, kept by design
            Path(volume).unlink(missing_ok=True)
