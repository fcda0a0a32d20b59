"""Drills on a network card's jobs in `make run`'s stack: the worker or the agent killed (SIGKILL)
while a card is being attached to a domain, then while it is being detached. Each job must end
exactly once and succeed (the console chose the card's MAC before the job, so a retried attach
finds its card made and says so; a retried detach finds it gone), leaving the card exactly once,
then not at all, in the domain's definition.

The domain is shut off and its card names the host's `default` network without starting it:
nothing here changes this machine's networking."""

from __future__ import annotations

import subprocess

import pytest

from tests.drills.conftest import DrillStack, wait_for
from tests.drills.test_make_run import record
from tests.drills.test_storage_faults import killed_mid_job

pytestmark = [pytest.mark.e2e, pytest.mark.drill]

MAC = "52:54:00:d1:11:01"


def macs_defined(name: str) -> list[str]:
    xml = subprocess.run(
        ["virsh", "-c", "qemu:///system", "dumpxml", "--inactive", name], capture_output=True, text=True
    ).stdout
    return [line.split("'")[1] for line in xml.splitlines() if "<mac address=" in line]


@pytest.mark.parametrize("part", ["worker", "agent"])
def test_card_jobs_survive_a_killed_worker_or_agent(drill_stack: DrillStack, part: str) -> None:
    stack = drill_stack
    stack.start()
    name, domain_id = stack.defined_guest()
    networks = stack.api("GET", f"/api/v1/hosts/{stack.host_id}/networks/").json()
    assert "default" in [n["name"] for n in networks], networks  # libvirt's own, defined at install

    nics = f"/api/v1/domains/{domain_id}/nics/"
    attached = killed_mid_job(stack, part, "POST", nics, {"name": "default", "mac": MAC})
    assert attached["status"] == "succeeded", attached
    assert macs_defined(name) == [MAC]
    wait_for(lambda: [n["mac"] for n in stack.domain(domain_id)["nics"]] == [MAC], "the card recorded")

    detached = killed_mid_job(stack, part, "POST", f"{nics}{MAC}/detach/")
    assert detached["status"] == "succeeded", detached
    assert macs_defined(name) == []
    wait_for(lambda: stack.domain(domain_id)["nics"] == [], "the card gone from the record")
    record(
        f"nic-sigkill-{part}",
        recovery_seconds=round(max(attached["recovery"], detached["recovery"]), 1),
        job_finished_seconds=round(max(attached["finished_after"], detached["finished_after"]), 1),
        job_attempts=[attached.get("attempts"), detached.get("attempts")],
        lost="nothing",
    )
    stack.stop()
