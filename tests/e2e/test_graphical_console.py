"""The graphical console in a real browser: noVNC draws a real guest's screen, types into it,
shares it between two tabs, and lets go when the guest stops."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, Stack, kernel_guest_body, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.libvirt]

# How many pixels of the noVNC canvas are not black (0 before there is a canvas).
_LIT_PIXELS = (
    "() => { const c = document.querySelector('#vnc-screen canvas'); if (!c || !c.width) return 0;"
    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
    " for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 0) n++; return n; }"
)


def _vnc_status(page: Any, text: str, timeout: float = 60_000) -> None:
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.wait_for_function(
            "(text) => document.getElementById('vnc-status').textContent === text", arg=text, timeout=timeout
        )
    except PageTimeout as timeout_error:  # say what the page said instead
        raise AssertionError(f"the console says {page.inner_text('#vnc-status')!r}") from timeout_error


def _presence(page: Any, text: str, timeout: float = 30_000) -> None:
    page.wait_for_selector(f'#vnc-presence:has-text("{text}")', timeout=timeout)


def _serial_log(stack: Stack, page: Any, domain_id: int) -> str:
    return str(page.request.get(f"{stack.url}/domains/{domain_id}/serial.log").text())


def _serial_log_has(
    stack: Stack, page: Any, domain_id: int, text: str, timeout: float = 60, more_than: int = 0
) -> None:
    """Wait until the serial log holds `text` more than `more_than` times."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = _serial_log(stack, page, domain_id)
        if log.count(text) > more_than:
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never reached the serial log (again): {log[-500:]!r}")


def test_keyboard_layouts_type_with_the_guest_s_keys(stack: Stack, browser: Any) -> None:
    """ "Type this text" presses the keys the guest's layout has for each character."""
    page = browser.new_page()
    sign_in(page, stack)
    page.add_script_tag(url=stack.url + "/static/domus/keyboard.js")
    strokes = page.evaluate(
        "() => Object.fromEntries([['us', 'a@'], ['de', 'zy@ä'], ['fr', 'aq1!'], ['pt', 'çé@'], ['gb', '@#']]"
        ".map(([l, t]) => [l, window.domusKeyboard.strokes(t, l)]))"
    )
    keys = {name: [(s["code"], s["mod"]) for s in r["strokes"]] for name, r in strokes.items()}
    assert keys["us"] == [("KeyA", ""), ("Digit2", "shift")]
    assert keys["de"] == [("KeyY", ""), ("KeyZ", ""), ("KeyQ", "altgr"), ("Quote", "")]
    assert keys["fr"] == [("KeyQ", ""), ("KeyA", ""), ("Digit1", "shift"), ("Slash", "")]
    # é on a Portuguese keyboard: the dead acute, then e.
    assert keys["pt"] == [("Semicolon", ""), ("BracketRight", ""), ("KeyE", ""), ("Digit2", "altgr")]
    assert keys["gb"] == [("Quote", "shift"), ("Backslash", "")]
    unplaced = page.evaluate("() => window.domusKeyboard.strokes('ж', 'us')")
    assert unplaced["unplaced"] == 1 and unplaced["strokes"][0]["code"] is None
    page.close()


def test_graphical_console_draws_types_and_is_shared(
    stack: Stack, guest_files: dict[str, str], domain_name: str, browser: Any
) -> None:
    body = kernel_guest_body(stack, guest_files, domain_name, graphics=True)
    created = stack.api("POST", "/api/v1/domains/", json=body)
    assert created.status_code == 202, created.text
    domain = created.json()["domain"]
    assert stack.wait_job(created.json()["job"])["status"] == "succeeded"
    started = stack.api("POST", f"/api/v1/domains/{domain['id']}/start/")
    assert stack.wait_job(started.json()["job"])["status"] == "succeeded"
    stack.wait_state(domain["id"], "running")

    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    sign_in(page, stack)
    page.goto(f"{stack.url}/domains/{domain['id']}/#graphical")
    _vnc_status(page, "connected")
    # The guest draws: the BIOS, then the kernel and a shell on its VGA console.
    page.wait_for_function(f"() => ({_LIT_PIXELS})() > 500", timeout=60_000)
    _presence(page, "you have control")

    # "Type this text" reaches the guest as keystrokes: the shell on its screen runs them.
    _serial_log_has(stack, page, domain["id"], "DOMUS-TEST-GUEST READY")  # its shells are up
    page.fill("#vnc-text", "echo VNC-TYPED-$((6*7)) >/dev/ttyS0")
    page.check("#vnc-enter")
    page.click("#vnc-type-button")
    page.wait_for_selector('#vnc-type-result:has-text("typed")')
    _serial_log_has(stack, page, domain["id"], "VNC-TYPED-42")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "graphical-console.png"), full_page=True)

    # The screenshot button downloads what the screen shows.
    with page.expect_download() as download:
        page.click('[data-vnc="screenshot"]')
    assert download.value.suggested_filename.startswith(domain_name + "-screen-")
    with open(download.value.path(), "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"

    # A second tab of the same user watches; it is not told it has control, and takes it.
    other = page.context.new_page()  # the same session
    other.goto(f"{stack.url}/domains/{domain['id']}/#graphical")
    _vnc_status(other, "connected")
    _presence(other, "admin has control")
    assert other.is_visible("#vnc-take-control")
    other.wait_for_function(f"() => ({_LIT_PIXELS})() > 500", timeout=30_000)
    other.click("#vnc-take-control")
    _presence(other, "you have control")
    _presence(page, "admin has control — admin took control")
    assert page.evaluate("() => window.domusVnc.rfb.viewOnly") is True
    page.fill("#vnc-text", "echo NOT-IN-CONTROL-$((1+1)) >/dev/ttyS0")
    page.click("#vnc-type-button")
    page.wait_for_selector('#vnc-type-result:has-text("take control first")')
    other.fill("#vnc-text", "echo SECOND-TAB-$((2+2)) >/dev/ttyS0")
    other.check("#vnc-enter")
    other.click("#vnc-type-button")
    _serial_log_has(stack, other, domain["id"], "SECOND-TAB-4")
    assert "NOT-IN-CONTROL" not in _serial_log(stack, other, domain["id"])

    # Ctrl+Alt+Del reaches the guest's kernel, which restarts the machine (the test guest's init
    # does not ask it not to): its boot banner comes again, and the screen stays connected.
    banners = _serial_log(stack, other, domain["id"]).count("DOMUS-TEST-GUEST READY")
    other.click('[data-vnc="ctrl-alt-del"]')
    _serial_log_has(stack, other, domain["id"], "DOMUS-TEST-GUEST READY", timeout=90, more_than=banners)
    _vnc_status(other, "connected")

    # The page's state event ("running", after its events socket's first resync) may come while
    # the serial console's first ticket is on its way: still one console socket, not a second one
    # holding control beside it.
    late = context.new_page()
    late.add_init_script(
        "document.addEventListener('DOMContentLoaded', () => setTimeout(() => document.dispatchEvent("
        "new CustomEvent('domus:domain-state', {detail: {state: 'running'}})), 0));"
    )
    sockets: list[str] = []
    late.on("websocket", lambda ws: sockets.append(ws.url) if "/ws/console/" in ws.url else None)
    late.goto(f"{stack.url}/domains/{domain['id']}/")
    late.wait_for_selector('#console-presence:has-text("Watching")')
    late.wait_for_timeout(3000)
    assert len(sockets) == 1, sockets
    late.close()

    # The domain stops: its console says so, and does not try again until it runs.
    stopped = stack.api("POST", f"/api/v1/domains/{domain['id']}/force-off/")
    assert stack.wait_job(stopped.json()["job"])["status"] == "succeeded"
    page.wait_for_function(
        "() => /disconnected|not running|shut off/.test(document.getElementById('vnc-status').textContent)"
    )
    page.wait_for_timeout(3000)
    assert "reconnecting" not in page.inner_text("#vnc-status")
    context.close()
