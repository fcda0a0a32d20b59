"""A real guest, driven only through the REST API and the console WebSocket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import POOL, Stack, kernel_guest_body, virsh_names

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt]


async def read_until(ws: aiohttp.ClientWebSocketResponse, needle: bytes, timeout: float = 60) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                continue  # a presence notice (who watches, who types), not console output
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(
                    f"console closed ({msg.type}, {msg.data!r}, {msg.extra!r}); got {seen[-500:]!r}"
                )
            seen += msg.data
    return seen


async def talk_to_guest(stack: Stack, ticket_url: str) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(stack.url.replace("http", "ws") + ticket_url, headers=stack.auth) as ws,
    ):
        await ws.send_bytes(b"\r")
        await read_until(ws, b"guest#")
        await ws.send_bytes(b"echo hello-$((6*7))\r")
        return await read_until(ws, b"hello-42")


async def reboot_and_watch(stack: Stack, ticket_url: str, domain_id: int) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(stack.url.replace("http", "ws") + ticket_url, headers=stack.auth) as ws,
    ):
        await ws.send_bytes(b"\r")
        await read_until(ws, b"guest#")  # attached, and the guest answers
        rebooted = await asyncio.to_thread(stack.api, "POST", f"/api/v1/domains/{domain_id}/reboot/")
        assert rebooted.status_code == 202, rebooted.text
        return await read_until(ws, b"DOMUS-TEST-GUEST READY", timeout=90)


async def watch_and_try_to_type(stack: Stack, view_url: str, interact_url: str) -> bytes:
    """A watcher sees what the guest prints, but what it types never reaches the guest."""
    ws_url = stack.url.replace("http", "ws")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url + view_url, headers=stack.auth) as watcher,
        session.ws_connect(ws_url + interact_url, headers=stack.auth) as typist,
    ):
        await watcher.send_bytes(b"echo viewonly-$((3*3))\r")
        await typist.send_bytes(b"echo marker-$((4*4))\r")
        seen = await read_until(watcher, b"marker-16")  # the watcher sees the typist's work
        await typist.send_bytes(b"echo marker-$((5*5))\r")  # anything the watcher sent came first
        return seen + await read_until(watcher, b"marker-25")


async def take_control_from_another(stack: Stack, first_url: str, second_url: str) -> bytes:
    """Two who may type: the first has control; the second types nothing until it takes it,
    which both are told."""
    ws_url = stack.url.replace("http", "ws")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url + first_url, headers=stack.auth) as first,
        session.ws_connect(ws_url + second_url, headers=stack.auth) as second,
    ):
        await second.send_bytes(b"echo early-$((2*2))\r")  # not in control: dropped
        await first.send_bytes(b"echo first-$((3*3))\r")
        seen = await read_until(second, b"first-9")
        await second.send_str('{"type": "take-control"}')
        notice = await next_presence(first, lambda p: "took control" in p["event"])
        assert notice["controller"] == "admin" and len(notice["viewers"]) == 2
        await second.send_bytes(b"echo second-$((4*4))\r")
        return seen + await read_until(first, b"second-16")


async def next_presence(ws: aiohttp.ClientWebSocketResponse, wanted: Any, timeout: float = 30) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT and wanted(notice := json.loads(msg.data)):
                return notice
            assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg


async def refused_reason(stack: Stack, ticket_url: str, *, signed_in: bool = True) -> tuple[int | None, str]:
    headers = stack.auth if signed_in else {}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(stack.url.replace("http", "ws") + ticket_url, headers=headers) as ws,
    ):
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE, msg
        return ws.close_code, str(msg.extra)


def test_guest_lifecycle_and_serial_console(
    stack: Stack, guest_files: dict[str, str], domain_name: str
) -> None:
    body = kernel_guest_body(stack, guest_files, domain_name, vcpus=1, disks=[{"size_gib": 1}])
    created = stack.api("POST", "/api/v1/domains/", json=body)
    assert created.status_code == 202, created.text
    domain = created.json()["domain"]
    job = stack.wait_job(created.json()["job"])
    assert job["status"] == "succeeded", job
    assert domain_name in virsh_names()
    volume = POOL / f"{domain_name}-{domain['uuid'][:8]}-disk0.qcow2"  # uuid's first 8 hex
    assert volume.exists()

    started = stack.api("POST", f"/api/v1/domains/{domain['id']}/start/")
    assert started.status_code == 202
    assert stack.wait_job(started.json()["job"])["status"] == "succeeded"
    stack.wait_state(domain["id"], "running")

    ticket = stack.api("POST", f"/api/v1/domains/{domain['id']}/console-tickets/", json={"kind": "serial"})
    assert ticket.status_code == 201, ticket.text
    output = asyncio.run(talk_to_guest(stack, ticket.json()["url"]))
    assert b"hello-42" in output

    # A view ticket watches; its keystrokes are dropped before they reach the agent.
    tickets = [
        stack.api(
            "POST", f"/api/v1/domains/{domain['id']}/console-tickets/", json={"kind": "serial", "mode": m}
        )
        for m in ("view", "interact")
    ]
    assert [t.json()["mode"] for t in tickets] == ["view", "interact"]
    watched = asyncio.run(watch_and_try_to_type(stack, tickets[0].json()["url"], tickets[1].json()["url"]))
    assert b"marker-16" in watched and b"marker-25" in watched
    assert b"viewonly-9" not in watched

    # Two who may type: one at a time, and taking control is explicit.
    urls = [
        stack.api("POST", f"/api/v1/domains/{domain['id']}/console-tickets/", json={"kind": "serial"}).json()[
            "url"
        ]
        for _ in range(2)
    ]
    typed = asyncio.run(take_control_from_another(stack, urls[0], urls[1]))
    assert b"second-16" in typed and b"early-4" not in typed

    # The ticket was spent: a second socket with it is refused, with the reason.
    code, reason = asyncio.run(refused_reason(stack, ticket.json()["url"]))
    assert code == 4403
    assert "already used" in reason

    # A fresh ticket without the user's token (a leaked one, say) opens nothing.
    leaked = stack.api("POST", f"/api/v1/domains/{domain['id']}/console-tickets/", json={"kind": "serial"})
    code, reason = asyncio.run(refused_reason(stack, leaked.json()["url"], signed_in=False))
    assert code == 4403
    assert "sign in" in reason

    # Pause freezes the guest and resume thaws it; reboot restarts it: its banner prints again
    # on the same console, which stays open across the reboot.
    for action, state in (("pause", "paused"), ("resume", "running")):
        job = stack.wait_job(stack.api("POST", f"/api/v1/domains/{domain['id']}/{action}/").json()["job"])
        assert job["status"] == "succeeded", job
        stack.wait_state(domain["id"], state)
    # Autostart: libvirt's own setting changes, and the console's record follows.
    turned_on = stack.api("POST", f"/api/v1/domains/{domain['id']}/autostart/", json={"enabled": True})
    assert stack.wait_job(turned_on.json()["job"])["status"] == "succeeded"
    dominfo = subprocess.run(
        ["virsh", "-c", "qemu:///system", "dominfo", domain_name], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"Autostart:\s+enable", dominfo), dominfo
    assert stack.api("GET", f"/api/v1/domains/{domain['id']}/").json()["autostart"] is True

    # Memory while it runs: less is applied at once (the balloon); more than it started with, and
    # more vCPUs than its maximum, wait for the next boot; the job says which.
    job = stack.wait_job(
        stack.api("POST", f"/api/v1/domains/{domain['id']}/resources/", json={"memory_mib": 192}).json()[
            "job"
        ]
    )
    assert job["status"] == "succeeded" and job["result"]["memory"] == "now", job
    job = stack.wait_job(
        stack.api(
            "POST", f"/api/v1/domains/{domain['id']}/resources/", json={"memory_mib": "320 MiB", "vcpus": 2}
        ).json()["job"]
    )
    assert (job["result"]["memory"], job["result"]["vcpus"]) == ("next boot", "next boot"), job
    assert "from the next boot" in job["log"]
    # A running domain cannot be renamed.
    assert stack.api("POST", f"/api/v1/domains/{domain['id']}/rename/", json={"name": "x"}).status_code == 409

    ticket = stack.api("POST", f"/api/v1/domains/{domain['id']}/console-tickets/", json={"kind": "serial"})
    output = asyncio.run(reboot_and_watch(stack, ticket.json()["url"], domain["id"]))
    assert b"DOMUS-TEST-GUEST READY" in output
    stack.wait_state(domain["id"], "running")

    stopped = stack.api("POST", f"/api/v1/domains/{domain['id']}/shutdown/")
    job = stack.wait_job(stopped.json()["job"], timeout=90)
    assert job["status"] == "succeeded", job
    stack.wait_state(domain["id"], "shutoff")

    # Shut off, it can be renamed: libvirt's name and the console's record both follow.
    renamed_to = domain_name + "-renamed"
    job = stack.wait_job(
        stack.api("POST", f"/api/v1/domains/{domain['id']}/rename/", json={"name": renamed_to}).json()["job"]
    )
    assert job["status"] == "succeeded", job
    assert renamed_to in virsh_names() and domain_name not in virsh_names()
    after = stack.api("GET", f"/api/v1/domains/{domain['id']}/").json()
    assert after["name"] == renamed_to
    assert (after["memory_mib"], after["vcpus"]) == (320, 2)  # what its next boot gets

    deleted = stack.api("DELETE", f"/api/v1/domains/{domain['id']}/?delete_disks=true")
    assert deleted.status_code == 202
    job = stack.wait_job(deleted.json()["job"])
    assert job["status"] == "succeeded", job
    assert domain_name not in virsh_names() and renamed_to not in virsh_names()
    assert not volume.exists()
    assert os.path.exists(guest_files["kernel"]), "boot files are not the domain's to delete"
    assert stack.api("GET", f"/api/v1/domains/{domain['id']}/").status_code == 404


def test_healthz_reports_every_part(stack: Stack) -> None:
    import requests

    data = requests.get(stack.url + "/healthz", timeout=10).json()
    assert data["ok"] is True, data
    assert {"database", "redis", "worker", "agents"} <= set(data)
    assert data["agents"]["online"] == data["agents"]["total"] >= 1


def test_api_without_token_is_refused_on_the_live_stack(stack: Stack) -> None:
    import requests

    assert requests.get(stack.url + "/api/v1/domains/", timeout=10).status_code == 401
