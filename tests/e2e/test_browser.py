"""A person's path: sign in, create a domain with the form, watch it boot in xterm.js, type."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, ROOT, Stack, virsh_names

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.libvirt]

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ],
        )
        yield browser
        browser.close()


def terminal_text(page: Any) -> str:
    return str(
        page.evaluate(
            """() => { const b = window.domusTerminal.buffer.active; const out = [];
                  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
                  return out.join('\\n'); }"""
        )
    )


def test_sign_in_create_and_use_the_serial_console(
    stack: Stack, guest_files: dict[str, str], domain_name: str, browser: Any
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.url + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Hosts")
    page.wait_for_selector('[data-host-state]:has-text("Online")')

    page.click("text=New domain >> nth=0")
    page.fill("input[name=name]", domain_name)
    page.fill("input[name=disk_gib]", "0")
    page.fill("input[name=kernel]", guest_files["kernel"])
    page.fill("input[name=initrd]", guest_files["initrd"])
    page.fill("input[name=cmdline]", "console=ttyS0 quiet")
    page.check("input[name=start]")
    page.click("button:has-text('Create')")

    # The domain page: state and the job update live, then the console attaches by itself.
    page.wait_for_selector(f"h1:has-text('{domain_name}')")
    page.wait_for_selector('[data-domain-state]:has-text("Running")', timeout=60_000)
    page.wait_for_selector('#jobs [data-field="status"]:has-text("succeeded")', timeout=60_000)
    page.wait_for_function(
        "() => window.domusTerminal && document.getElementById('console-status').textContent === 'connected'",
        timeout=30_000,
    )
    page.wait_for_function(
        "() => { const b = window.domusTerminal.buffer.active; for (let i = 0; i < b.length; i++)"
        " if (b.getLine(i).translateToString(true).includes('guest#')) return true; return false; }",
        timeout=60_000,
    )
    page.click("#terminal")
    page.keyboard.type("echo hello-$((6*7))")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => { const b = window.domusTerminal.buffer.active; for (let i = 0; i < b.length; i++)"
        " if (b.getLine(i).translateToString(true).trim() === 'hello-42') return true; return false; }",
        timeout=30_000,
    )
    page.keyboard.type("uname -sr")
    page.keyboard.press("Enter")
    page.wait_for_timeout(800)
    assert "hello-42" in terminal_text(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serial-console.png"), full_page=True)

    # Force off and delete from the page; the live list drops it.
    page.click("button[data-action=force-off]")
    page.wait_for_selector('[data-domain-state]:has-text("Shut off")', timeout=30_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=delete]")
    page.wait_for_url(stack.url + "/")
    page.wait_for_selector(f'[data-domain-row]:has-text("{domain_name}")', state="detached", timeout=30_000)
    assert domain_name not in virsh_names()
    page.close()
