"""Fault drills: the whole stack as `make run` starts it (console.launcher), with its parts killed,
stopped and restarted under it while jobs run on real guests.

A drill stack always has its own embedded Redis (restarting a Redis the machine shares is not a
drill's to do), its own data directory and ports, and, when DATABASE_URL names PostgreSQL, a
scratch database there. Leases and sweeps are short, so that a lost worker's job is taken over in
seconds rather than half a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import ADMIN_PASSWORD, ROOT, _free_port, _libvirt_works, guest_in_pool, virsh_names
from tests.postgres import drop_database, scratch_database

FAST_LEASES = {
    "DOMUS_JOB_LEASE_SECONDS": "6",
    "DOMUS_JOB_LEASE_RENEW_SECONDS": "1",
    "DOMUS_JOB_SWEEP_SECONDS": "1",
    "DOMUS_JOB_RELAY_SECONDS": "0.5",
    "DOMUS_STOP_TIMEOUT_SECONDS": "30",
}
RECOVERY_SECONDS = 15  # the console answers again within this after any single fault


@dataclass
class DrillStack:
    data_dir: Path
    env: dict[str, str]
    log: Path
    name_prefix: str
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""
    host_id: int = 0
    guest: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    # -- the launcher -----------------------------------------------------------------------
    def start(self, timeout: float = 120) -> float:
        """Start `make run`'s launcher; seconds until it said the console is ready."""
        started = time.monotonic()
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "console.launcher"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while b"console ready" not in self.log.read_bytes()[offset:]:
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                raise AssertionError(f"the stack did not start:\n{self.tail()}")
            time.sleep(0.2)
        if not self.token:
            self.token = subprocess.run(
                [sys.executable, "manage.py", "issue_token", "admin"],
                cwd=ROOT,
                env=self.env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            hosts = self.api("GET", "/api/v1/hosts/").json()["results"]
            self.host_id = next(h["id"] for h in hosts if h["name"] == "local")
        return time.monotonic() - started

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def logged(self) -> str:
        """The whole log: what the launcher said may be followed by pages of the other parts'
        tracebacks (every part that used a killed Redis says so), past what tail() shows."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data_dir / "launcher.json").read_text()))
        except (OSError, ValueError):
            return {}

    def pid(self, part: str) -> int:
        pid = self.state().get("parts", {}).get(part, {}).get("pid")
        assert pid, f"{part} is not running: {self.state()}"
        return int(pid)

    def kill(self, part: str, sig: signal.Signals = signal.SIGKILL) -> int:
        pid = self.pid(part)
        os.kill(pid, sig)
        return pid

    def leftovers(self) -> list[str]:
        """Processes still running that belong to this stack: the launcher gives every part
        its DOMUS_DATA_DIR, and the embedded Redis has its socket there."""
        mark = f"DOMUS_DATA_DIR={self.data_dir}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if mark in environ.split(b"\0") or str(self.data_dir).encode() in cmdline:
                found.append(f"{entry.name}: {cmdline.decode(errors='replace').strip()}")
        return found

    # -- the console ------------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Token {self.token}"}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            response = requests.get(self.url + "/healthz", timeout=5)
        except requests.RequestException as exc:
            return 0, {"error": str(exc)}
        return response.status_code, response.json()

    def wait_healthy(self, timeout: float = 60, since: float | None = None) -> float:
        """Until /healthz says 200 (and the local agent is heard); seconds since `since`."""
        since = time.monotonic() if since is None else since
        last: dict[str, Any] = {}
        while time.monotonic() - since < timeout:
            status, last = self.health()
            if status == 200:
                return time.monotonic() - since
            time.sleep(0.25)
        raise AssertionError(f"not healthy after {timeout:.0f} s: {last}\n{self.tail()}")

    def wait_job(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                response = self.api("GET", f"/api/v1/jobs/{job_id}/")
                if response.status_code == 200:
                    job = response.json()
                    if job["status"] in ("succeeded", "failed", "cancelled"):
                        return job
            except requests.RequestException:
                pass  # the web part may be restarting
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not end in {timeout:.0f} s: {job}\n{self.tail()}")

    def domain(self, domain_id: int) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/v1/domains/{domain_id}/").json())

    def wait_domain_state(self, domain_id: int, state: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = self.domain(domain_id).get("state")
            except requests.RequestException:
                seen = "(no answer)"
            if seen == state:
                return
            time.sleep(0.3)
        raise AssertionError(f"domain {domain_id} is {seen}, not {state}")

    def new_name(self) -> str:
        return f"{self.name_prefix}-{uuid.uuid4().hex[:6]}"

    def create_guest(self, name: str, *, start: bool) -> tuple[int, int]:
        """POST a test guest (kernel boot, no disk); (domain id, job id) of the 202."""
        boot = {"kernel": self.guest["kernel"], "initrd": self.guest["initrd"], "cmdline": "console=ttyS0"}
        body = {"name": name, "host": self.host_id, "memory_mib": 128, "boot": boot, "start": start}
        response = self.api("POST", "/api/v1/domains/", json=body)
        assert response.status_code == 202, response.text
        data = response.json()
        return int(data["domain"]["id"]), int(data["job"]["id"])

    def defined_guest(self) -> tuple[str, int]:
        """A new test guest, defined and shut off: (name, domain id)."""
        name = self.new_name()
        domain_id, created = self.create_guest(name, start=False)
        assert self.wait_job(created)["status"] == "succeeded"
        return name, domain_id

    def audit_finished(self, job_id: int) -> int:
        """How many times the audit trail recorded the end of job `job_id`."""
        params = {"action": "job.finished", "object_type": "job", "object_id": str(job_id)}
        return int(self.api("GET", "/api/v1/audit/", params=params).json()["count"])


def cleanup_guests(prefix: str) -> None:
    for name in virsh_names():
        if name.startswith(prefix):
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True)
            subprocess.run(["virsh", "-c", "qemu:///system", "undefine", name], capture_output=True)


def assert_unique_in_libvirt(prefix: str) -> set[str]:
    listed = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    ours = [name for name in listed if name.startswith(prefix)]
    assert len(ours) == len(set(ours)), f"duplicated in libvirt: {ours}"
    return set(ours)


@pytest.fixture
def drill_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrillStack]:
    """A stack of its own (stopped, its guests removed and its processes checked gone at the end)."""
    if not _libvirt_works():
        pytest.skip("no libvirt daemon answers on qemu:///system (run `make test`, which starts it)")
    guest = guest_in_pool()
    if guest is None:
        pytest.skip("no test guest: run tests/guest/build.sh (make test does)")
    data_dir = tmp_path_factory.mktemp("drill")
    env = {
        **os.environ,
        **FAST_LEASES,
        "DOMUS_DATA_DIR": str(data_dir),
        "PORT": str(_free_port()),
        "DOMUS_AGENT_PORT": str(_free_port()),
        "DOMUS_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "DOMUS_ACCEL": "tcg",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)  # its own embedded Redis, which the drills restart
    database = os.environ.get("DATABASE_URL", "")
    scratch = ""
    if database.startswith("postgres"):
        env["DATABASE_URL"] = scratch = scratch_database(database, f"domus_drill_{uuid.uuid4().hex[:6]}")
    else:
        env.pop("DATABASE_URL", None)
    stack = DrillStack(
        data_dir=data_dir, env=env, log=data_dir / "stack.log", name_prefix=f"drill-{uuid.uuid4().hex[:4]}"
    )
    stack.guest = guest
    try:
        yield stack
    finally:
        stack.stop()
        cleanup_guests(stack.name_prefix)
        if scratch:
            drop_database(scratch)
    assert not stack.leftovers(), f"left behind: {stack.leftovers()}"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started
