"""A person's path: sign in, create a domain with the wizard from an ISO, watch it boot in
xterm.js, type, and drive its whole lifecycle from the page."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, Stack, sign_in, virsh_names, virsh_volumes

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.libvirt]

# How many lines of the page's terminal contain a text (0 before the terminal exists).
_COUNT_LINES = (
    "(text) => { const b = window.domusTerminal && window.domusTerminal.buffer.active; if (!b) return 0;"
    " let n = 0; for (let i = 0; i < b.length; i++) if (b.getLine(i).translateToString(true).includes(text)) n++;"
    " return n; }"
)


def _terminal_count(page: Any, text: str) -> int:
    return int(page.evaluate(_COUNT_LINES, text))


def _terminal_gets_more(page: Any, text: str, before: int, timeout: float = 120_000) -> None:
    """Wait for more lines with `text` than `before` (the boot already printed it once, and the
    console's history replays it: its first appearance proves nothing)."""
    page.wait_for_function(
        f"([text, before]) => ({_COUNT_LINES})(text) > before", arg=[text, before], timeout=timeout
    )


def _terminal_has(page: Any, text: str, timeout: float = 60_000) -> None:
    _terminal_gets_more(page, text, 0, timeout)


def _state(page: Any, label: str, timeout: float = 60_000) -> None:
    page.wait_for_selector(f'[data-domain-state]:has-text("{label}")', timeout=timeout)


def _next(page: Any, step: int) -> None:
    page.click("#next")
    page.wait_for_selector(f'#stepper li.current[data-step="{step}"]', timeout=30_000)


def test_wizard_install_from_iso_and_the_whole_lifecycle(
    stack: Stack, guest_iso: str, domain_name: str, browser: Any
) -> None:
    """The wizard installs from the ISO the tests build; then every lifecycle action from the page."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, stack)
    page.click("text=New domain >> nth=0")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # The host reports its pools' ISOs every 10 s: the one just copied in appears within that.
    deadline = time.monotonic() + 40
    while guest_iso not in page.inner_text("#wizard-data") and time.monotonic() < deadline:
        page.wait_for_timeout(2000)
        page.reload()

    # 1: a bad name is refused by the server before the next step opens.
    page.fill("input[name=name]", "not a name")
    page.click("#next")
    page.wait_for_selector('[data-error-for="name"]:has-text("letters, digits")')
    page.fill("input[name=name]", domain_name)
    _next(page, 2)
    # 2: this host emulates: HVM is offered (and says it is slow), PV and PVH are not.
    assert page.is_enabled("input[name=mode][value=hvm]")
    assert page.is_disabled("input[name=mode][value=pv]") and page.is_disabled("input[name=mode][value=pvh]")
    assert "software emulation" in page.inner_text("#modes")
    page.screenshot(path=str(ARTIFACTS / "wizard-mode.png"))
    _next(page, 3)
    # 3: the ISO is listed from the host's pool.
    page.check("input[name=boot_kind][value=iso]")
    page.select_option("select[name=iso_pick]", guest_iso)
    _next(page, 4)
    page.select_option("select[name=os_family]", "other")
    page.select_option("select[name=os]", "generic")
    _next(page, 5)
    page.fill(".disk-row [name=d_size]", "64")
    page.select_option(".disk-row [name=d_unit]", "MiB")
    page.screenshot(path=str(ARTIFACTS / "wizard-disks.png"))
    _next(page, 6)
    for remove in page.query_selector_all(".nic-row [data-remove]"):
        remove.click()  # no network card: this host's virtual network may not exist
    _next(page, 7)
    page.fill("input[name=memory]", "256")
    page.select_option("select[name=memory_unit]", "MiB")
    _next(page, 8)
    summary = page.inner_text("#summary")
    assert domain_name in summary and "64 MiB qcow2" in summary
    page.click("#xml-details summary")
    xml = page.inner_text("#xml")
    assert guest_iso in xml and "<domain" in xml
    page.screenshot(path=str(ARTIFACTS / "wizard-review.png"), full_page=True)
    page.check("input[name=start]")
    page.click("#create")

    # The domain page: the job and the state update live; the installer's console attaches.
    page.wait_for_selector(f"h1:has-text('{domain_name}')")
    _state(page, "Running")
    page.wait_for_selector('#jobs [data-field="status"]:has-text("succeeded")', timeout=60_000)
    _terminal_has(page, "guest#")
    page.wait_for_selector('#console-presence:has-text("you have control")')
    page.click("#terminal")
    page.keyboard.type("echo hello-$((6*7))")
    page.keyboard.press("Enter")
    _terminal_has(page, "hello-42", 30_000)
    # Send break, then a key: the guest's kernel reads them as Magic SysRq (h prints its help).
    page.click("#console-break")
    page.keyboard.press("h")
    _terminal_has(page, "sysrq: HELP", 30_000)
    # Copy and paste as in a desktop terminal: Ctrl+Shift+V (the browser's paste) and the Paste
    # button type the clipboard into the guest (its newline runs it); Ctrl+Shift+C copies the
    # selection.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    page.evaluate("navigator.clipboard.writeText('echo PASTED-$((40+2))\\n')")
    page.click("#terminal")
    page.keyboard.press("Control+Shift+V")
    _terminal_has(page, "PASTED-42", 30_000)
    page.evaluate("navigator.clipboard.writeText('echo BUTTON-$((50+5))\\n')")
    page.click("#console-paste")
    _terminal_has(page, "BUTTON-55", 30_000)
    page.evaluate("navigator.clipboard.writeText('')")
    page.evaluate("window.domusTerminal.selectAll(); window.domusTerminal.focus()")
    page.keyboard.press("Control+Shift+C")
    page.wait_for_selector('#console-status:has-text("copied")')
    assert "PASTED-42" in page.evaluate("navigator.clipboard.readText()")
    page.evaluate("window.domusTerminal.clearSelection()")
    page.screenshot(path=str(ARTIFACTS / "serial-console.png"), full_page=True)
    # The serial log download: what the guest printed, boot included, recorded by its agent.
    download = page.request.get(page.url.rstrip("/") + "/serial.log")
    assert download.ok and "attachment" in download.headers["content-disposition"]
    assert "DOMUS-TEST-GUEST READY" in download.text() and "hello-42" in download.text()

    page.click("button[data-action=pause]")
    _state(page, "Paused")
    page.click("button[data-action=resume]")
    _state(page, "Running")
    # The installer's reboot ends the installation: the domain powers off (as virt-install's
    # install boot does), and the next start boots the installed definition.
    page.click("button[data-action=reboot]")
    _state(page, "Shut off")
    # Its console ended with it (the page says so: disconnected, or the domain is shut off).
    page.wait_for_function("() => document.getElementById('console-status').textContent !== 'connected'")
    page.click("button[data-action=start]")
    _state(page, "Running")
    # The console reconnects by itself, on a clean screen the agent fills with the new boot.
    page.wait_for_function("() => document.getElementById('console-status').textContent === 'connected'")
    _terminal_has(page, "DOMUS-TEST-GUEST READY", 120_000)  # its blank disk falls to the CD
    assert _terminal_count(page, "hello-42") == 0  # the last run's output is not replayed
    # Now a reboot is a reboot: the machine restarts and keeps running.
    loaders, banners = _terminal_count(page, "ISOLINUX"), _terminal_count(page, "DOMUS-TEST-GUEST READY")
    page.click("button[data-action=reboot]")
    _terminal_gets_more(page, "ISOLINUX", loaders)
    _terminal_gets_more(page, "DOMUS-TEST-GUEST READY", banners)
    page.wait_for_selector("button[data-action=shutdown]:not([disabled])", timeout=60_000)
    page.click("button[data-action=shutdown]")
    _state(page, "Shut off", 120_000)

    # Delete with its disks: the confirmation lists what will be destroyed.
    volume = next(p for p in virsh_volumes() if p.startswith(domain_name))
    messages: list[str] = []

    def accept(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.check("input[name=delete_disks]")
    page.click("button[data-action=delete]")
    page.wait_for_url(stack.url + "/")
    page.wait_for_selector(f'[data-domain-row]:has-text("{domain_name}")', state="detached", timeout=60_000)
    assert volume in messages[0]
    assert domain_name not in virsh_names()
    assert volume not in virsh_volumes()
    assert Path(guest_iso).exists()  # the installer ISO is not the domain's to delete
    page.close()
