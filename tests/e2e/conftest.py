"""The whole stack, started the way `make run` starts it, with real guests under QEMU."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.postgres import drop_database, scratch_database

ROOT = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(os.environ.get("DOMUS_GUEST_DIR", ROOT / ".cache" / "guest"))
POOL = Path("/var/lib/libvirt/images")
ADMIN_PASSWORD = "e2e-admin-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _libvirt_works() -> bool:
    return subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0


@dataclass
class Stack:
    url: str
    token: str
    log: Path
    host_id: int
    data_dir: Path | None = None  # launcher.json there says each part's pid

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers=self.auth, timeout=30, **kwargs)

    def wait_job(self, job: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.api("GET", f"/api/v1/jobs/{job['id']}/").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job['id']} ({job['kind']}) still {job['status']}: {job['log']}")

    def wait_state(self, domain_id: int, state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.api("GET", f"/api/v1/domains/{domain_id}/").json().get("state")
            if seen == state:
                return
            time.sleep(0.3)
        raise AssertionError(f"domain {domain_id} is {seen}, not {state}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not _libvirt_works():
        pytest.skip("no libvirt daemon answers on qemu:///system (run `make test`, which starts it)")
    data_dir = tmp_path_factory.mktemp("stack")
    port = _free_port()
    env = {
        **os.environ,
        "DOMUS_DATA_DIR": str(data_dir),
        "PORT": str(port),
        "DOMUS_AGENT_PORT": str(_free_port()),
        "DOMUS_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "DOMUS_SHUTDOWN_TIMEOUT_SECONDS": "60",
    }
    database = os.environ.get("DATABASE_URL", "")
    if database.startswith("postgres"):
        env["DATABASE_URL"] = scratch_database(database, "domus_e2e")
    else:
        env.pop("DATABASE_URL", None)
    log = data_dir / "stack.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "console.launcher"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while b"console ready" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the stack did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.3)
        token = subprocess.run(
            [sys.executable, "manage.py", "issue_token", "admin"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        stack = Stack(url=f"http://127.0.0.1:{port}", token=token, log=log, host_id=0, data_dir=data_dir)
        hosts = stack.api("GET", "/api/v1/hosts/").json()["results"]
        stack.host_id = next(h["id"] for h in hosts if h["name"] == "local")
        yield stack
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the launcher stops what it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if env.get("DATABASE_URL", "").startswith("postgres"):
            drop_database(env["DATABASE_URL"])


def guest_in_pool() -> dict[str, str] | None:
    """The test guest's kernel and initrd, copied into the host's default pool (where the agent
    boots kernels from); None when the guest has not been built. Also bench/console_serial.py's."""
    kernel, initrd = GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.img"
    if not (kernel.exists() and initrd.exists()):
        return None
    POOL.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, src in (("kernel", kernel), ("initrd", initrd)):
        dest = POOL / f"domus-test-guest-{src.name}"
        if not dest.exists() or dest.stat().st_mtime < src.stat().st_mtime:
            shutil.copy2(src, dest)
            dest.chmod(0o644)
        files[name] = str(dest)
    return files


@pytest.fixture(scope="session")
def guest_files() -> dict[str, str]:
    """The test guest's kernel and initrd, copied into the host's default pool."""
    files = guest_in_pool()
    if files is None:
        pytest.skip(f"no test guest in {GUEST_DIR}: run tests/guest/build.sh (make test does)")
    return files


@pytest.fixture(scope="session")
def guest_iso() -> str:
    """The test guest as a bootable ISO (an "installer"), copied into the host's default pool."""
    iso = GUEST_DIR / "guest.iso"
    if not iso.exists():
        pytest.skip(f"no test guest ISO in {GUEST_DIR}: run tests/guest/build.sh (make test does)")
    POOL.mkdir(parents=True, exist_ok=True)
    dest = POOL / "domus-test-guest.iso"
    if not dest.exists() or dest.stat().st_mtime < iso.stat().st_mtime:
        shutil.copy2(iso, dest)
        dest.chmod(0o644)
    return str(dest)


def kernel_guest_body(stack: Stack, guest_files: dict[str, str], name: str, **fields: Any) -> dict[str, Any]:
    """`POST /api/v1/domains/` body for the test guest booted from its kernel, on the stack's host."""
    boot = {"kernel": guest_files["kernel"], "initrd": guest_files["initrd"], "cmdline": "console=ttyS0"}
    return {"name": name, "host": stack.host_id, "memory_mib": 256, "boot": boot, **fields}


@pytest.fixture
def domain_name() -> Iterator[str]:
    name = f"domus-test-{uuid.uuid4().hex[:8]}"
    yield name
    # Nothing may be left behind, whatever the test did (a test may have renamed it).
    for left in (name, f"{name}-renamed"):
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", left], capture_output=True)
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "undefine", left, "--remove-all-storage"],
            capture_output=True,
        )


def virsh_names() -> set[str]:
    out = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def virsh_volumes(pool: str = "default") -> set[str]:
    """Names of the volumes in `pool` (after the two header lines of `virsh vol-list`)."""
    out = subprocess.run(
        ["virsh", "-c", "qemu:///system", "vol-list", pool],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


# -- a real browser (Debian's chromium, driven by Playwright) ----------------------------------
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


def sign_in(page: Any, stack: Stack) -> None:
    page.goto(stack.url + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Hosts")
    page.wait_for_selector('[data-host-state]:has-text("Online")')


# -- the Content-Security-Policy, as the browser enforces it -------------------------------------
# Runs in every document before its own scripts (an init script is not subject to the page's
# CSP) and hands each violation to the test, which keeps them across navigations.
_REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => window.domusCspViolation({
  page: location.href, directive: e.effectiveDirective, blocked: e.blockedURI,
  source: e.sourceFile + ":" + e.lineNumber, sample: e.sample,
}));
"""


@dataclass
class Watch:
    """What the browser said about the policy, and the pages it was sent."""

    violations: list[Any] = field(default_factory=list)
    documents: list[Any] = field(default_factory=list)

    def assert_clean(self) -> None:
        said = list(dict.fromkeys(map(str, self.violations)))  # each once, in the order said
        assert not said, "\n".join(said)
        unguarded = [
            r.url
            for r in self.documents
            if "content-security-policy" not in r.all_headers() and r.status < 300
        ]
        assert not unguarded, f"pages without a Content-Security-Policy: {unguarded}"


def watched_context(browser: Any, **options: Any) -> tuple[Any, Watch]:
    """A browser context whose pages report every violation of the policy to the `Watch`."""
    watch = Watch()
    context = browser.new_context(**options)
    context.expose_binding("domusCspViolation", lambda source, v: watch.violations.append(v))
    context.add_init_script(_REPORT_VIOLATIONS)

    def on_page(page: Any) -> None:
        def on_console(message: Any) -> None:
            # The console's own words too: a violation in a worker or a bad policy has no event.
            if "Content Security Policy" in message.text:
                watch.violations.append(f"{page.url}: {message.text}")

        def on_response(response: Any) -> None:
            if response.request.resource_type == "document":
                watch.documents.append(response)

        page.on("console", on_console)
        page.on("response", on_response)

    context.on("page", on_page)
    return context, watch
