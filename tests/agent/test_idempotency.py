"""Idempotency keys on the agent (agent/idempotency.py), through the app the agent serves
(`server.make_app`, with a fake libvirt side that counts what it is asked to do) and the real
client (`AgentClient(idempotency_key=...)`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent.client import AgentClient, AgentConflict, AgentError
from agent.errors import Conflict
from agent.events import EventHub
from agent.idempotency import REPLAYED_HEADER, IdempotencyStore, StoredAnswer
from agent.identity import AgentIdentity, ConsoleKeys
from agent.protocol import DomainInfo
from agent.runtime import AgentRuntime
from agent.server import make_app

SECRET_A = "console-a-secret-0123456789abcdef"
SECRET_B = "console-b-secret-0123456789abcdef"
DOMAIN = uuid.UUID("6f1c1ad3-5b1e-4e40-9a65-2f7d1c0b9d11")


class FakeDomains:
    """The libvirt side: counts each action it is asked to do."""

    local_files = False  # as on the test driver: no consoles to record

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None  # when set, start() waits for it
        self.entered = asyncio.Event()  # start() has begun
        self.fail_next = False

    def _info(self, state: str) -> DomainInfo:
        return DomainInfo(uuid=DOMAIN, name="web", state=state, vcpus=1, memory_mib=64)  # type: ignore[arg-type]

    async def start(self, domain_uuid: uuid.UUID) -> DomainInfo:
        self.calls.append("start")
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise Conflict("the host is busy; try again")
        return self._info("running")

    async def suspend(self, domain_uuid: uuid.UUID) -> DomainInfo:
        self.calls.append("suspend")
        return self._info("paused")

    async def shutdown(self, domain_uuid: uuid.UUID) -> DomainInfo:
        self.calls.append("shutdown")
        return self._info("running")

    async def get(self, domain_uuid: uuid.UUID) -> DomainInfo:
        self.calls.append("get")
        return self._info("running")


class FakeRuntime:
    def __init__(self, keys: ConsoleKeys) -> None:
        self.keys = keys
        self.domains = FakeDomains()
        self.identity = None
        self.hub = EventHub()  # only for the WebSocket routes, which these tests do not use


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[tuple[str, FakeDomains]]:
    """An agent app that knows two consoles: A (the command-line secret) and B (paired)."""
    identity = AgentIdentity(str(tmp_path / "state"))
    identity.state_dir.mkdir(parents=True)
    identity.consoles_path.write_text(
        json.dumps({"console-b": {"hash": hashlib.sha256(SECRET_B.encode()).hexdigest(), "previous": None}})
    )
    runtime = FakeRuntime(ConsoleKeys(identity, SECRET_A))
    server = TestServer(make_app(cast(AgentRuntime, runtime)))
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), runtime.domains
    finally:
        await server.close()


async def test_the_same_key_twice_does_the_work_once(agent: tuple[str, FakeDomains]) -> None:
    url, domains = agent
    async with AgentClient(url, SECRET_A, idempotency_key="job-7") as client:
        first = await client.start(DOMAIN)
    async with AgentClient(url, SECRET_A, idempotency_key="job-7") as client:  # the retried job
        second = await client.start(DOMAIN)
    assert domains.calls == ["start"]
    assert first == second and second.state == "running"


async def test_without_a_key_every_call_is_done(agent: tuple[str, FakeDomains]) -> None:
    url, domains = agent
    async with AgentClient(url, SECRET_A) as client:
        await client.start(DOMAIN)
        await client.start(DOMAIN)
    assert domains.calls == ["start", "start"]


async def test_different_keys_do_the_work_each_time(agent: tuple[str, FakeDomains]) -> None:
    url, domains = agent
    for job in ("job-7", "job-8"):
        async with AgentClient(url, SECRET_A, idempotency_key=job) as client:
            await client.start(DOMAIN)
    async with AgentClient(url, SECRET_A, idempotency_key="job-7") as client:
        await client.suspend(DOMAIN)  # same job, another operation: another key
    assert domains.calls == ["start", "start", "suspend"]


async def test_each_press_of_the_power_button_is_its_own_request(agent: tuple[str, FakeDomains]) -> None:
    """A shutdown job presses again while it waits (a booting guest loses a press): each press
    reaches libvirt, and a retried job's presses are still answered from memory."""
    url, domains = agent
    for _attempt in range(2):  # the job, then the same job retried after its worker died
        async with AgentClient(url, SECRET_A, idempotency_key="job-9") as client:
            for press in (1, 2, 3):
                await client.shutdown(DOMAIN, press=press)
    assert domains.calls == ["shutdown", "shutdown", "shutdown"]


async def test_reads_are_not_remembered(agent: tuple[str, FakeDomains]) -> None:
    url, domains = agent
    async with AgentClient(url, SECRET_A, idempotency_key="job-7") as client:
        await client.get_domain(DOMAIN)
        await client.get_domain(DOMAIN)
    assert domains.calls == ["get", "get"]


async def test_consoles_do_not_share_keys(agent: tuple[str, FakeDomains]) -> None:
    url, domains = agent
    for secret in (SECRET_A, SECRET_B, SECRET_B):
        async with AgentClient(url, secret, idempotency_key="job-7") as client:
            await client.start(DOMAIN)
    assert domains.calls == ["start", "start"]  # A once, B once (its repeat was replayed)


async def test_a_failed_request_is_done_again_on_retry(agent: tuple[str, FakeDomains]) -> None:
    url, domains = agent
    domains.fail_next = True
    async with AgentClient(url, SECRET_A, idempotency_key="job-7") as client:
        with pytest.raises(AgentConflict):
            await client.start(DOMAIN)
        assert (await client.start(DOMAIN)).state == "running"
        await client.start(DOMAIN)
    assert domains.calls == ["start", "start"]


async def raw_post(url: str, path: str, key: str) -> tuple[int, dict[str, Any], str]:
    headers = {"Authorization": f"Bearer {SECRET_A}", "Idempotency-Key": key}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, headers=headers) as resp:
            return resp.status, await resp.json(), resp.headers.get(REPLAYED_HEADER, "")


async def test_a_repeat_says_it_was_replayed(agent: tuple[str, FakeDomains]) -> None:
    url, _domains = agent
    path = f"/v1/domains/{DOMAIN}/start"
    first = await raw_post(url, path, "k1")
    second = await raw_post(url, path, "k1")
    assert (first[0], first[2]) == (200, "")
    assert second == (200, first[1], "true")


async def test_a_repeat_while_the_first_runs_waits_for_it(agent: tuple[str, FakeDomains]) -> None:
    url, domains = agent
    domains.gate = asyncio.Event()
    path = f"/v1/domains/{DOMAIN}/start"
    first = asyncio.create_task(raw_post(url, path, "k1"))
    await asyncio.wait_for(domains.entered.wait(), 10)  # the first is inside the handler
    second = asyncio.create_task(raw_post(url, path, "k1"))
    await asyncio.sleep(0.2)  # let the second reach the agent while the first is held
    assert domains.calls == ["start"] and not first.done() and not second.done()
    domains.gate.set()
    answers = await asyncio.gather(first, second)
    assert domains.calls == ["start"]
    assert [a[0] for a in answers] == [200, 200] and answers[1][2] == "true"


async def test_a_key_reused_for_another_request_is_refused(agent: tuple[str, FakeDomains]) -> None:
    url, domains = agent
    await raw_post(url, f"/v1/domains/{DOMAIN}/start", "k1")
    status, body, _ = await raw_post(url, f"/v1/domains/{DOMAIN}/suspend", "k1")
    assert status == 422 and body["error"] == "idempotency_key_reused"
    assert domains.calls == ["start"]


async def test_unauthenticated_requests_are_refused_before_any_replay(agent: tuple[str, FakeDomains]) -> None:
    url, domains = agent
    async with AgentClient(url, SECRET_A, idempotency_key="job-7") as client:
        await client.start(DOMAIN)
    async with AgentClient(url, "wrong-secret", idempotency_key="job-7") as client:
        with pytest.raises(AgentError) as refused:
            await client.start(DOMAIN)
    assert refused.value.status == 401 and domains.calls == ["start"]


def test_the_store_is_bounded_in_size_and_age() -> None:
    now = [0.0]
    store = IdempotencyStore(max_entries=2, ttl=60, clock=lambda: now[0])

    def answer() -> StoredAnswer:
        return StoredAnswer("f", 200, b"{}", "application/json", expires_at=now[0] + store.ttl)

    for key in ("a", "b", "c"):
        store.put("console", key, answer())
    assert store.get("console", "a") is None and store.get("console", "c") is not None
    assert len(store) == 2
    store.put("other", "a", answer())  # each console has its own bound
    assert len(store) == 3
    now[0] = 61
    assert store.get("console", "c") is None and len(store) == 0
