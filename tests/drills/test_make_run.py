"""Drills on `make run` (console.launcher and what it supervises), with real processes and guests:

- SIGKILL of each part (worker, web, hostwatch, Redis, agent) while a job is in flight;
- SIGSTOP of the agent beyond the heartbeat (the host goes offline and comes back) and beyond the
  job's deadline (the job fails saying so, and the domain's state tells what really happened);
- SIGHUP and SIGKILL of the launcher itself, then a new start.

After each: the console answers again within RECOVERY_SECONDS, every job that was answered 202
ended exactly once (one `job.finished` in the audit trail) and says what really happened, no
domain is left "Being defined", nothing is duplicated in libvirt, and, once stopped, no process of
the stack is left. Recovery times are written to tests/artifacts/drills.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.drills.conftest import RECOVERY_SECONDS, DrillStack, assert_unique_in_libvirt, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.drill]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def record(drill: str, **numbers: Any) -> None:
    """Keep a drill's measurements (the issue's note reports them)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "drills.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[drill] = numbers
    path.write_text(json.dumps(results, indent=2, sort_keys=True))


def virsh_state(name: str) -> str:
    out = subprocess.run(
        ["virsh", "-c", "qemu:///system", "domstate", name], capture_output=True, text=True
    ).stdout.strip()
    return out.splitlines()[0] if out else "(undefined)"


def assert_nothing_being_defined(stack: DrillStack) -> None:
    domains = stack.api("GET", "/api/v1/domains/", params={"limit": 500}).json()["results"]
    assert not [d["name"] for d in domains if d["state"] == "new"], domains


@pytest.mark.parametrize("part", ["worker", "web", "hostwatch", "redis", "agent"])
def test_sigkill_of_each_part_mid_job(drill_stack: DrillStack, part: str) -> None:
    stack = drill_stack
    stack.start()
    name, domain_id = stack.defined_guest()

    # The job is mid-way for sure: its worker is inside the agent call, which waits on a stopped
    # agent. Then `part` is killed, and the agent resumed.
    agent = stack.pid("agent")
    os.kill(agent, signal.SIGSTOP)
    try:
        job = stack.api("POST", f"/api/v1/domains/{domain_id}/start/").json()["job"]
        wait_for(
            lambda: stack.api("GET", f"/api/v1/jobs/{job['id']}/").json()["status"] == "running",
            "job running",
        )
        time.sleep(0.5)  # its request is on its way to the agent
        killed_at = time.monotonic()
        stack.kill(part)
    finally:
        os.kill(agent, signal.SIGCONT)
    recovery = stack.wait_healthy(timeout=60, since=killed_at)
    ended = stack.wait_job(job["id"])
    finished_after = time.monotonic() - killed_at

    assert recovery < RECOVERY_SECONDS, f"{part}: healthy again after {recovery:.1f} s"
    assert ended["status"] == "succeeded", ended
    assert virsh_state(name) == "running"
    stack.wait_domain_state(domain_id, "running")
    assert stack.audit_finished(job["id"]) == 1
    wait_for(lambda: stack.state()["parts"][part]["state"] == "running", f"{part} running again")
    assert stack.state()["parts"][part]["restarts"] == 1
    assert f"{part} killed by SIGKILL; restarting it" in stack.logged()
    assert_nothing_being_defined(stack)
    assert assert_unique_in_libvirt(stack.name_prefix) == {name}
    record(
        f"sigkill-{part}",
        recovery_seconds=round(recovery, 1),
        job_finished_seconds=round(finished_after, 1),
        job_attempts=ended.get("attempts"),
        lost="nothing",
    )
    stack.stop()


def test_a_stopped_agent_goes_offline_then_back_and_a_job_past_its_deadline_fails_honestly(
    drill_stack: DrillStack,
) -> None:
    stack = drill_stack
    stack.env["DOMUS_JOB_DEADLINE_SECONDS"] = "45"  # longer than one call's timeout (30 s)
    stack.start()
    name, domain_id = stack.defined_guest()

    agent = stack.pid("agent")
    os.kill(agent, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        job = stack.api("POST", f"/api/v1/domains/{domain_id}/start/").json()["job"]
        offline = wait_for(
            lambda: stack.api("GET", f"/api/v1/hosts/{stack.host_id}/").json()["state"] == "offline",
            "host offline",
        )
        ended = stack.wait_job(job["id"], timeout=90)
    finally:
        os.kill(agent, signal.SIGCONT)
    resumed_at = time.monotonic()
    assert ended["status"] == "failed", ended
    assert "gave up at the job's deadline" in ended["error"] and "may still be carried out" in ended["error"]
    assert "retrying in" in ended["log"]
    assert stack.audit_finished(job["id"]) == 1
    back = wait_for(
        lambda: stack.api("GET", f"/api/v1/hosts/{stack.host_id}/").json()["state"] == "online", "host online"
    )
    # The request the agent had taken before it stopped is carried out once it runs again; the
    # console shows what the host really has, whatever the job said.
    real = virsh_state(name)
    stack.wait_domain_state(domain_id, {"shut off": "shutoff"}.get(real, real))
    assert assert_unique_in_libvirt(stack.name_prefix) == {name}
    record(
        "sigstop-agent",
        offline_after_seconds=round(offline + 0, 1),
        job_failed_after_seconds=round(resumed_at - stopped_at, 1),
        online_again_seconds=round(back, 1),
        guest_after_resume=real,
    )
    stack.stop()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_the_launcher_killed_or_hung_up_leaves_nothing_and_starts_again(
    drill_stack: DrillStack, sig: signal.Signals
) -> None:
    stack = drill_stack
    stack.start()
    name = stack.new_name()
    domain_id, created = stack.create_guest(name, start=True)
    assert stack.proc is not None
    os.kill(stack.proc.pid, sig)
    stack.proc.wait(60)
    stack.proc = None
    gone = wait_for(lambda: not stack.leftovers(), f"the parts of a launcher ended by {sig.name}", timeout=20)

    restart = stack.start()
    ended = stack.wait_job(created)  # cut short by the kill, or finished before the hang-up's stop
    assert ended["status"] == "succeeded", ended
    assert virsh_state(name) == "running"
    stack.wait_domain_state(domain_id, "running")
    assert stack.audit_finished(created) == 1
    assert_nothing_being_defined(stack)
    assert assert_unique_in_libvirt(stack.name_prefix) == {name}
    record(
        f"launcher-{sig.name}",
        parts_gone_seconds=round(gone, 1),
        restart_seconds=round(restart, 1),
        job=ended["status"],
        job_attempts=ended.get("attempts"),
    )
    stack.stop()
