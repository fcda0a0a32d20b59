"""A guest that cannot hear the ACPI power button when the shutdown job first presses it (as one
still in its firmware or early boot cannot) is pressed again until it powers off.

Deterministic whatever the machine's load: the guest's button handler (busybox acpid) is stopped
before the job starts, and the guest itself re-arms it only after it has taken the first press's
interrupt (the SCI count in /proc/interrupts went up) and a second more, so the first press is lost
for certain, and only a later one can power the guest off."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.conftest import Stack, kernel_guest_body
from tests.e2e.test_serial_console import read_until

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt]

SCI = "$(awk '/acpi/{print $2}' /proc/interrupts)"
DISARM = f"killall acpid; n0={SCI}; echo disarmed-$((6*7))\r"
# Waits (in the guest) for the next SCI, then a second, then re-arms acpid as /init started it.
REARM = (
    f"until [ {SCI} -gt $n0 ]; do sleep 0.1; done; sleep 1; "
    "acpid -c /etc/acpi -a /etc/acpid.conf -l /tmp/acpid.log; echo rearmed-$((7*8))\r"
)


async def shut_down_a_deaf_guest(stack: Stack, ticket_url: str, domain_id: int) -> tuple[bytes, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(stack.url.replace("http", "ws") + ticket_url, headers=stack.auth) as ws,
    ):
        await ws.send_bytes(b"\r")
        await read_until(ws, b"guest#")
        await ws.send_bytes(DISARM.encode())
        seen = await read_until(ws, b"disarmed-42")
        await ws.send_bytes(REARM.encode())
        stopped = await asyncio.to_thread(stack.api, "POST", f"/api/v1/domains/{domain_id}/shutdown/")
        assert stopped.status_code == 202, stopped.text
        seen += await read_until(ws, b"rearmed-56", timeout=90)  # the first press was heard, by nobody
        job = await asyncio.to_thread(stack.wait_job, stopped.json()["job"], 120)
        return seen, job


def test_shutdown_presses_again_a_guest_that_missed_the_first_press(
    stack: Stack, guest_files: dict[str, str], domain_name: str
) -> None:
    body = kernel_guest_body(stack, guest_files, domain_name, vcpus=1)
    created = stack.api("POST", "/api/v1/domains/", json=body)
    assert created.status_code == 202, created.text
    domain = created.json()["domain"]
    assert stack.wait_job(created.json()["job"])["status"] == "succeeded"
    started = stack.api("POST", f"/api/v1/domains/{domain['id']}/start/")
    assert stack.wait_job(started.json()["job"])["status"] == "succeeded"
    ticket = stack.api("POST", f"/api/v1/domains/{domain['id']}/console-tickets/", json={"kind": "serial"})
    _, job = asyncio.run(shut_down_a_deaf_guest(stack, ticket.json()["url"], domain["id"]))
    assert job["status"] == "succeeded", job
    assert "Pressed the power button again (2)" in job["log"], job["log"]
    stack.wait_state(domain["id"], "shutoff")
    deleted = stack.api("DELETE", f"/api/v1/domains/{domain['id']}/?delete_disks=true")
    assert stack.wait_job(deleted.json()["job"])["status"] == "succeeded"
