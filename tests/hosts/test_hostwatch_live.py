"""hostwatch against a real agent (libvirt's test driver): online, offline, back and reconciled."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from channels.db import database_sync_to_async

from agent.client import AgentClient
from agent.protocol import DomainEvent
from domains.models import Domain
from hosts.hostwatch import HostKey, HostWatch
from hosts.models import Host

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "hostwatch-test-secret-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log, self.proc = port, log, None

    def start(self) -> None:
        env = {**os.environ, "DOMUS_AGENT_SECRET": SECRET}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "--uri",
                    "test:///default",
                    "--port",
                    str(self.port),
                    "--pool-path",
                    str(self.log.parent),
                    "--state-dir",
                    str(self.log.parent / "agent-state"),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/v1/health", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(self.log.read_text())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(free_port(), tmp_path / "agent.log")
    agent.start()
    yield agent
    agent.stop()


async def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await database_sync_to_async(check)():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_offline_then_back_and_reconciled(agent: Agent, settings: object) -> None:
    settings.DOMUS_HOST_OFFLINE_AFTER_SECONDS = 3  # type: ignore[attr-defined]
    host = await database_sync_to_async(Host.objects.create)(
        name="watched", url=f"http://127.0.0.1:{agent.port}", secret=SECRET
    )

    def state() -> str:
        return str(Host.objects.get(pk=host.pk).state)

    watch = HostWatch()
    runner = asyncio.create_task(watch.run())
    try:
        await eventually(lambda: state() == "online")
        # The test driver's own domain "test" appears, found behind Domus's back.
        await eventually(lambda: Domain.objects.filter(host=host, name="test", state="running").exists())

        await asyncio.to_thread(agent.stop)  # not blocking the loop hostwatch runs on
        await eventually(lambda: state() == "offline")
        detail = await database_sync_to_async(lambda: Host.objects.get(pk=host.pk).state_detail)()
        assert "unreachable" in detail or "closed" in detail, detail

        await asyncio.to_thread(agent.start)  # same port, same secret: the watcher reconnects with backoff
        await eventually(lambda: state() == "online", timeout=25)
        await eventually(lambda: Domain.objects.filter(host=host, name="test").count() == 1)
    finally:
        runner.cancel()
        for task in watch.watchers.values():
            task.cancel()
        await asyncio.gather(runner, *watch.watchers.values(), return_exceptions=True)


async def test_a_dead_watcher_is_restarted(agent: Agent) -> None:
    await database_sync_to_async(Host.objects.create)(
        name="w2", url=f"http://127.0.0.1:{agent.port}", secret=SECRET
    )
    watch = HostWatch()
    await watch.rescan()
    ((key, task),) = watch.watchers.items()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await watch.rescan()
    assert not watch.watchers[key].done()
    for task in watch.watchers.values():
        task.cancel()
    await asyncio.gather(*watch.watchers.values(), return_exceptions=True)


async def test_a_reread_of_a_frozen_agent_is_bounded_like_the_stream(agent: Agent) -> None:
    """A domain stopped just before its agent froze: reading it again must not outlast the offline
    deadline (the client's own timeout is far longer), or the host stays online while it hangs."""
    watch = HostWatch()
    watch.offline_after = 1.5
    key = HostKey(1, "frozen", f"http://127.0.0.1:{agent.port}", SECRET, "")
    client = AgentClient(key.url, SECRET)
    async with client:
        (test_domain,) = [d for d in await client.list_domains() if d.name == "test"]
        event = DomainEvent(uuid=test_domain.uuid, name="test", event="stopped", state="shutoff")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            reread = asyncio.ensure_future(watch._apply(key, event, client))
            done, _ = await asyncio.wait([reread], timeout=6)  # far under the client's timeout
            assert done, "the re-read outlasted the offline deadline"
            assert isinstance(reread.exception(), TimeoutError)
        finally:
            reread.cancel()
            agent.proc.send_signal(signal.SIGCONT)


async def test_leaving_a_frozen_agents_stream_on_an_error_does_not_wait_for_its_goodbye(
    agent: Agent,
) -> None:
    """What follows a failure (the host marked offline) must not wait ws_close's 10 s for the
    close frame of an agent that cannot answer."""
    assert agent.proc is not None
    client = AgentClient(f"http://127.0.0.1:{agent.port}", SECRET)

    async def fail_inside_the_stream() -> None:
        async with client, client.events() as ws:
            await ws.receive()  # the inventory: the stream is up
            agent.proc.send_signal(signal.SIGSTOP)
            raise TimeoutError("no heartbeat")

    leaving = asyncio.ensure_future(fail_inside_the_stream())
    try:
        done, _ = await asyncio.wait([leaving], timeout=5)  # ws_close is 10 s
        assert done, "leaving the stream waited for the frozen agent"
        assert isinstance(leaving.exception(), TimeoutError)  # the failure itself, not the close's
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
