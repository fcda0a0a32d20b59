"""Storage pools from the host page, in a real browser, on make run's stack and a real libvirtd:
define a directory pool with the form (built, started), watch the table follow each change
without a reload, make a volume on the pool's page, download and delete it, stop the pool, and
delete it with its directory; then a pool made with virsh behind
Domus's back appears on the open page by itself."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS, Stack, sign_in, watched_context

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.libvirt]


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True)


@pytest.fixture
def pool_names() -> Any:
    names: list[str] = []
    yield names
    for name in names:  # whatever a failed test left behind
        virsh("pool-destroy", name)
        virsh("pool-undefine", name)


def test_a_pool_is_defined_stopped_and_deleted_from_the_host_page(
    stack: Stack, browser: Any, tmp_path: Path, pool_names: list[str]
) -> None:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    behind = f"{name}-virsh"
    pool_names += [name, behind]
    directory = tmp_path / "pool"  # built by the pool: it does not exist yet
    context, watch = watched_context(browser, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        sign_in(page, stack)
        page.goto(f"{stack.url}/hosts/{stack.host_id}/")
        page.locator("details.pool-new summary").click()
        form = page.locator("[data-pool-form]")
        form.locator("input[name=name]").fill(name)
        form.locator("select[name=type]").select_option("dir")
        assert form.locator("input[name=source_host]").is_hidden()  # a directory needs no server
        form.locator("input[name=target_path]").fill(str(directory))
        form.locator("input[name=build]").check()
        with page.expect_navigation():
            form.locator("button:has-text('Define pool')").click()
        assert f"Defining the storage pool {name}" in page.inner_text(".flash.success")
        row = page.locator(f'tr[data-pool="{name}"]')
        row.wait_for(timeout=30_000)  # the job ends, the host's pools change: the table follows
        expect(page.locator(f'tr[data-pool="{name}"] [data-pool-state]')).to_have_text(
            "running", timeout=30_000
        )
        assert row.locator("[data-pool-autostart]").inner_text() == "yes"
        assert directory.is_dir()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "host-pools.png"), full_page=True)

        # Its page: a volume made, listed when its job ends (no reload), downloaded, deleted.
        with page.expect_navigation():
            row.locator(f"a:has-text('{name}')").click()
        page.locator("details.volume-new summary").click()
        page.locator("details.volume-new input[name=name]").fill("vol1.qcow2")
        page.locator("details.volume-new input[name=size]").fill("64 MiB")
        with page.expect_navigation():
            page.locator("button:has-text('Create volume')").click()
        volume = page.locator('tr[data-volume-name="vol1.qcow2"]')
        volume.wait_for(timeout=30_000)
        assert volume.locator("[data-volume-capacity]").inner_text() == "64.0\xa0MiB"
        assert volume.locator("[data-volume-use]").inner_text() == "unused"
        with page.expect_download() as fetched:
            volume.locator("a:has-text('Download')").click()
        saved = fetched.value.path()
        assert saved is not None and Path(saved).read_bytes() == (directory / "vol1.qcow2").read_bytes()
        page.screenshot(path=str(ARTIFACTS / "pool-volumes.png"), full_page=True)
        with page.expect_navigation():
            volume.locator("button:has-text('Delete')").click()
        page.locator('tr[data-volume-name="vol1.qcow2"]').wait_for(state="detached", timeout=30_000)
        assert not (directory / "vol1.qcow2").exists()

        page.goto(f"{stack.url}/hosts/{stack.host_id}/")
        row = page.locator(f'tr[data-pool="{name}"]')
        with page.expect_navigation():
            row.locator("button:has-text('Stop')").click()
        expect(page.locator(f'tr[data-pool="{name}"] [data-pool-state]')).to_have_text(
            "inactive", timeout=30_000
        )
        row = page.locator(f'tr[data-pool="{name}"]')
        row.locator("input[name=delete_storage]").check()
        with page.expect_navigation():
            row.locator("button:has-text('Delete')").click()
        page.locator(f'tr[data-pool="{name}"]').wait_for(state="detached", timeout=30_000)
        assert not directory.exists()
        assert name not in virsh("pool-list", "--all", "--name").stdout.split()

        # Behind Domus's back: the open page shows it without a reload.
        (tmp_path / "virsh").mkdir()
        made = virsh("pool-create-as", behind, "dir", "--target", str(tmp_path / "virsh"))
        assert made.returncode == 0, made.stderr
        page.locator(f'tr[data-pool="{behind}"]').wait_for(timeout=30_000)
        watch.assert_clean()
    finally:
        context.close()
    jobs = stack.api("GET", "/api/v1/jobs/", params={"limit": 20}).json()["results"]
    mine = [j for j in jobs if j["target_name"] in (f"pool {name}", "vol1.qcow2")]
    assert sorted(j["kind"] for j in mine) == [
        "pool.create",
        "pool.delete",
        "pool.stop",
        "volume.create",
        "volume.delete",
    ]
    assert all(j["status"] == "succeeded" for j in mine), mine
