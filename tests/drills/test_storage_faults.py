"""Drills on storage jobs in `make run`'s stack: the worker or the agent killed (SIGKILL) while a
pool is being defined and while a volume is being made in it. Each job must end exactly once,
succeed (the agent's answers are idempotent: a pool or volume already made by the interrupted
attempt is answered as made), and leave exactly one pool and one volume in libvirt."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.drills.conftest import RECOVERY_SECONDS, DrillStack, wait_for
from tests.drills.test_make_run import record

pytestmark = [pytest.mark.e2e, pytest.mark.drill]


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True)


@pytest.fixture
def pool_name() -> Iterator[str]:
    name = f"drill-{uuid.uuid4().hex[:6]}"
    yield name
    virsh("pool-destroy", name)
    virsh("pool-undefine", name)


def killed_mid_job(
    stack: DrillStack, part: str, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Ask for `body` while the agent is stopped (so the job is surely inside its agent call),
    kill `part`, let the agent go on; the job as it ended, and how long recovery took."""
    agent = stack.pid("agent")
    os.kill(agent, signal.SIGSTOP)
    try:
        response = stack.api(method, path, json=body)
        assert response.status_code == 202, response.text
        job = response.json()["job"]  # a host's job answers its id, a domain's the job itself
        job_id = job["id"] if isinstance(job, dict) else job
        wait_for(
            lambda: stack.api("GET", f"/api/v1/jobs/{job_id}/").json()["status"] == "running", "job running"
        )
        time.sleep(0.5)  # its request is on its way to the agent
        killed_at = time.monotonic()
        stack.kill(part)
    finally:
        os.kill(agent, signal.SIGCONT)
    recovery = stack.wait_healthy(timeout=60, since=killed_at)
    ended = stack.wait_job(job_id)
    assert recovery < RECOVERY_SECONDS, f"{part}: healthy again after {recovery:.1f} s"
    assert stack.audit_finished(job_id) == 1
    wait_for(lambda: stack.state()["parts"][part]["state"] == "running", f"{part} running again")
    return {**ended, "recovery": recovery, "finished_after": time.monotonic() - killed_at}


@pytest.mark.parametrize("part", ["worker", "agent"])
def test_storage_jobs_survive_a_killed_worker_or_agent(
    drill_stack: DrillStack, part: str, pool_name: str, tmp_path: Path
) -> None:
    stack = drill_stack
    stack.start()
    directory = tmp_path / "pool"
    pools = f"/api/v1/hosts/{stack.host_id}/pools/"
    body = {"name": pool_name, "type": "dir", "target_path": str(directory), "build": True}
    defined = killed_mid_job(stack, part, "POST", pools, body)
    assert defined["status"] == "succeeded", defined
    listed = virsh("pool-list", "--all", "--name").stdout.split()
    assert listed.count(pool_name) == 1 and directory.is_dir()

    made = killed_mid_job(
        stack, part, "POST", f"{pools}{pool_name}/volumes/", {"name": "disk.qcow2", "size": "64 MiB"}
    )
    assert made["status"] == "succeeded", made
    listing = virsh("vol-list", pool_name).stdout.splitlines()[2:]  # under its two heading lines
    assert [line.split()[0] for line in listing if line.strip()] == ["disk.qcow2"], listing
    rows = stack.api("GET", f"{pools}{pool_name}/volumes/").json()["results"]
    assert [(v["name"], v["capacity_bytes"]) for v in rows] == [("disk.qcow2", 64 << 20)]
    record(
        f"storage-sigkill-{part}",
        recovery_seconds=round(max(defined["recovery"], made["recovery"]), 1),
        job_finished_seconds=round(max(defined["finished_after"], made["finished_after"]), 1),
        job_attempts=[defined.get("attempts"), made.get("attempts")],
        lost="nothing",
    )
    stack.stop()
