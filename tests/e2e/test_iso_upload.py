"""An ISO uploaded from the wizard's "Upload an ISO", in a real browser through tus: the network
drops and the console's web process is killed half-way (the launcher starts it again), the
upload goes on by itself from what the host holds, its SHA-256 is shown, the ISO is chosen, and
the new domain boots from it to the test guest's shell. Also the pool page's upload form."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.e2e.conftest import ARTIFACTS, GUEST_DIR, POOL, Stack, sign_in
from tests.e2e.test_browser import _next, _terminal_has
from tests.e2e.throttle import ThrottlingProxy

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.libvirt]

SIZE = 24 << 20  # the test guest's ISO, padded with zeros (ISO 9660 ignores what follows it)
RATE = 6 << 20  # bytes per second through the proxy: about 4 s for the whole upload


def padded_iso(directory: Path, name: str) -> Path:
    source = GUEST_DIR / "guest.iso"
    if not source.exists():
        pytest.skip(f"no test guest ISO in {GUEST_DIR}: run tests/guest/build.sh (make test does)")
    iso = directory / name
    shutil.copyfile(source, iso)
    assert iso.stat().st_size < SIZE
    with iso.open("ab") as out:
        out.truncate(SIZE)
    return iso


def web_pid(stack: Stack) -> int:
    assert stack.data_dir is not None
    state = json.loads((stack.data_dir / "launcher.json").read_text())
    return int(state["parts"]["web"]["pid"])


@pytest.fixture
def pool_file() -> Any:
    made: list[str] = []
    yield made
    for name in made:
        (POOL / name).unlink(missing_ok=True)
        subprocess.run(["virsh", "-c", "qemu:///system", "pool-refresh", "default"], capture_output=True)


def test_an_iso_uploaded_in_the_wizard_survives_a_cut_and_a_restart_and_boots(
    stack: Stack, browser: Any, domain_name: str, tmp_path: Path, pool_file: list[str]
) -> None:
    name = f"{domain_name}.iso"
    pool_file.append(name)
    iso = padded_iso(tmp_path, name)
    digest = hashlib.sha256(iso.read_bytes()).hexdigest()
    port = urlparse(stack.url).port
    assert port
    with ThrottlingProxy(port, rate_bytes_per_s=RATE) as proxy:
        slow = dataclasses.replace(stack, url=f"http://127.0.0.1:{proxy.port}")
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        sign_in(page, slow)
        page.click("text=New domain >> nth=0")
        page.fill("input[name=name]", domain_name)
        _next(page, 2)
        _next(page, 3)
        page.check("input[name=boot_kind][value=iso]")
        page.click("[data-wizard-upload] summary")
        page.select_option("[data-wizard-upload] [data-upload-pool]", "default")
        page.set_input_files("[data-wizard-upload] [data-upload-file]", str(iso))
        before = proxy.sent_upstream
        page.click("[data-wizard-upload] [data-upload-start]")

        # Half-way: the rate and the time left are shown; then the network drops and the web
        # process dies (SIGKILL: nothing said to anyone); the launcher starts a new one.
        deadline = time.monotonic() + 60
        while proxy.sent_upstream - before < SIZE // 2:
            assert time.monotonic() < deadline, page.inner_text("[data-wizard-upload]")
            time.sleep(0.05)
        shown = page.inner_text("[data-wizard-upload] [data-upload-text]")
        assert "/s" in shown and "left" in shown and " of 24.0\xa0MiB" in shown, shown
        page.screenshot(path=str(ARTIFACTS / "upload-progress.png"))
        killed = web_pid(stack)
        os.kill(killed, signal.SIGKILL)
        proxy.cut()
        sent_at_cut = proxy.sent_upstream - before

        done = page.locator('[data-wizard-upload] [data-upload-status][data-state="done"]')
        done.wait_for(timeout=120_000)
        assert web_pid(stack) != killed  # a new web process served the rest
        said = page.inner_text("[data-wizard-upload] [data-upload-text]")
        assert f"SHA-256 {digest}" in said, said
        assert (POOL / name).read_bytes() == iso.read_bytes()
        # What was resent after the cut: less than the whole file again (it resumed).
        resent = proxy.sent_upstream - before - SIZE
        assert resent < SIZE - sent_at_cut // 2, (sent_at_cut, resent)
        # The ISO is offered with its size and checksum, and chosen.
        assert page.input_value("select[name=iso_pick]") == str(POOL / name)
        assert digest in page.inner_text("[data-iso-about]")
        page.screenshot(path=str(ARTIFACTS / "wizard-upload.png"), full_page=True)

        # The rest of the wizard, and the domain boots from the uploaded ISO.
        _next(page, 4)
        page.select_option("select[name=os_family]", "other")
        page.select_option("select[name=os]", "generic")
        _next(page, 5)
        page.fill(".disk-row [name=d_size]", "64")
        page.select_option(".disk-row [name=d_unit]", "MiB")
        _next(page, 6)
        for remove in page.query_selector_all(".nic-row [data-remove]"):
            remove.click()
        _next(page, 7)
        page.fill("input[name=memory]", "256")
        page.select_option("select[name=memory_unit]", "MiB")
        _next(page, 8)
        page.check("input[name=start]")
        page.click("#create")
        page.wait_for_selector(f"h1:has-text('{domain_name}')")
        _terminal_has(page, "guest#", 120_000)
        page.close()


def test_the_pool_page_uploads_and_lists_with_the_checksum(
    stack: Stack, browser: Any, tmp_path: Path, pool_file: list[str]
) -> None:
    name = f"page-{os.getpid()}-{int(time.time())}.img"
    pool_file.append(name)
    data = os.urandom(3 << 20)
    source = tmp_path / name
    source.write_bytes(data)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, stack)
    page.goto(f"{stack.url}/hosts/{stack.host_id}/pools/default/")
    page.click("#upload summary")
    page.set_input_files("#upload [data-upload-file]", str(source))
    page.click("#upload button[type=submit]")
    page.locator('#upload [data-upload-status][data-state="done"]').wait_for(timeout=60_000)
    assert hashlib.sha256(data).hexdigest() in page.inner_text("#upload [data-upload-text]")
    # The volumes table follows by itself (the agent reports the pool's change).
    page.locator(f'tr[data-volume-name="{name}"]').wait_for(timeout=30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "pool-upload.png"), full_page=True)
    page.close()
