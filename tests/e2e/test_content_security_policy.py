"""The Content-Security-Policy in a real browser: every page, the wizard, xterm.js, noVNC and the
API docs work under it, and the browser reports no violation of it anywhere on the way."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, Stack, sign_in, watched_context

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.libvirt]

# How many pixels of the noVNC canvas are not black (0 before there is a canvas).
_LIT_PIXELS = (
    "() => { const c = document.querySelector('#vnc-screen canvas'); if (!c || !c.width) return 0;"
    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
    " for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 0) n++; return n; }"
)
_TERMINAL_HAS = (
    "(text) => { const b = window.domusTerminal && window.domusTerminal.buffer.active; if (!b) return false;"
    " for (let i = 0; i < b.length; i++) if (b.getLine(i).translateToString(true).includes(text)) return true;"
    " return false; }"
)


def _next(page: Any, step: int) -> None:
    page.click("#next")
    page.wait_for_selector(f'#stepper li.current[data-step="{step}"]', timeout=30_000)


def _running(page: Any, stack: Stack) -> None:
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.wait_for_selector('[data-domain-state]:has-text("Running")', timeout=120_000)
    except PageTimeout as timeout:  # say what the page and the stack said instead
        raise AssertionError(
            f"not running: {page.inner_text('main')[:2000]}\n{stack.log.read_text()[-3000:]}"
        ) from timeout


def test_pages_work_under_the_policy_with_no_violation(
    stack: Stack, guest_files: dict[str, str], domain_name: str, browser: Any
) -> None:
    context, watch = watched_context(browser, viewport={"width": 1280, "height": 1000})
    page = context.new_page()

    # Signed out: the sign-in page.
    response = page.goto(stack.url + "/login/")
    assert "script-src 'self';" in response.all_headers()["content-security-policy"]
    sign_in(page, stack)  # and the overview, with its live-status socket

    # The plain pages.
    for path, ready in [
        ("/hosts/", "[data-host-state]"),
        (f"/hosts/{stack.host_id}/", "table.modes"),
        ("/hosts/add/", "main form"),
        ("/jobs/", "main"),
        ("/teams/", "main h1"),
        ("/account/tokens/", "main form"),
        ("/account/2fa/", "main img"),
        ("/audit/", "main"),
    ]:
        page.goto(stack.url + path)
        page.wait_for_selector(ready)
        page.wait_for_load_state("networkidle")
    # The host page's confirmation (from data-confirm, no onsubmit attribute): refused, nothing sent.
    page.goto(f"{stack.url}/hosts/{stack.host_id}/")
    questions: list[str] = []

    def refuse(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", refuse)
    page.click("form[data-confirm] button:has-text('Remove')")
    page.wait_for_timeout(500)
    assert questions and questions[0].startswith("Remove local?"), questions
    assert page.url.rstrip("/").endswith(f"/hosts/{stack.host_id}")

    # The wizard, step by step (each step is checked by the server), to a guest with both consoles.
    page.goto(stack.url + "/domains/new/")
    page.fill("input[name=name]", domain_name)
    _next(page, 2)
    _next(page, 3)
    page.check("input[name=boot_kind][value=kernel]")
    page.fill("input[name=kernel]", guest_files["kernel"])
    page.fill("input[name=initrd]", guest_files["initrd"])
    _next(page, 4)
    page.select_option("select[name=os_family]", "other")
    page.select_option("select[name=os]", "generic")
    _next(page, 5)
    page.fill(".disk-row [name=d_size]", "64")
    page.select_option(".disk-row [name=d_unit]", "MiB")
    _next(page, 6)
    for remove in page.query_selector_all(".nic-row [data-remove]"):
        remove.click()  # no network card: this host's virtual network may not exist
    _next(page, 7)
    page.fill("input[name=memory]", "256")
    page.select_option("select[name=memory_unit]", "MiB")
    assert page.is_checked("input[name=graphics]") and page.is_checked("input[name=serial]")
    _next(page, 8)
    page.click("#xml-details summary")
    assert guest_files["kernel"] in page.inner_text("#xml")
    page.check("input[name=start]")
    page.click("#create")

    # The domain page: xterm.js shows the serial console, noVNC the screen.
    page.wait_for_selector(f"h1:has-text('{domain_name}')")
    _running(page, stack)
    page.wait_for_function(_TERMINAL_HAS, arg="guest#", timeout=90_000)
    page.click("#tab-graphical")
    page.wait_for_function(
        "() => document.getElementById('vnc-status').textContent === 'connected'", timeout=60_000
    )
    page.wait_for_function(f"() => ({_LIT_PIXELS})() > 500", timeout=60_000)
    page.click("#tab-serial")
    page.click("#terminal")
    page.keyboard.type("echo csp-$((6*7))")
    page.keyboard.press("Enter")
    page.wait_for_function(_TERMINAL_HAS, arg="csp-42", timeout=30_000)

    # The API docs: Swagger UI from this console's static files, its settings in a script file.
    response = page.goto(stack.url + "/api/v1/docs/")
    assert "cdn" not in response.text() and "<script>" not in response.text()
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock").count() > 20  # it read the schema and rendered its operations
    # One operation tried out: its request goes with the session, its answer is highlighted.
    page.click(".opblock-summary:has-text('/api/v1/access/why/')")
    page.click(".opblock.is-open button.try-out__btn")
    page.click(".opblock.is-open button.execute")
    page.wait_for_selector(".opblock.is-open .live-responses-table .response-col_status:has-text('200')")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"))

    page.wait_for_timeout(1000)  # late reports (a style written after a socket's first message)
    watch.assert_clean()
    context.close()
