"""hostwatch and a pinned agent whose certificate changes: shown as such, sent nothing."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from channels.db import database_sync_to_async

from hosts.enrolment import host_enrol
from hosts.hostwatch import HostWatch
from hosts.models import Host
from tests.agent.conftest import launch_agent, stop_agent
from tests.hosts.test_hostwatch_live import eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.libvirt]


async def test_a_new_certificate_shows_identity_changed(tmp_path: Path, settings: object) -> None:
    settings.DOMUS_HOST_OFFLINE_AFTER_SECONDS = 3  # type: ignore[attr-defined]
    (tmp_path / "pool").mkdir()
    agent = await asyncio.to_thread(
        launch_agent, uri="test:///default", pool_dir=tmp_path / "pool", log_path=tmp_path / "a.log", tls=True
    )
    host = await database_sync_to_async(host_enrol)(
        name="pinned", url=agent.url, pairing_code=agent.pairing_code
    )

    def state() -> str:
        return str(Host.objects.get(pk=host.pk).state)

    watch = HostWatch()
    runner = asyncio.create_task(watch.run())
    try:
        await eventually(lambda: state() == "online")
        # The host is "reinstalled": same address, new key and certificate.
        await asyncio.to_thread(stop_agent, agent)
        assert agent.state_dir is not None
        shutil.rmtree(agent.state_dir)
        log_before = agent.log_path.read_text()
        agent = await asyncio.to_thread(
            launch_agent,
            uri="test:///default",
            pool_dir=tmp_path / "pool",
            log_path=tmp_path / "a.log",
            tls=True,
            state_dir=agent.state_dir,
            port=agent.port,
        )
        await eventually(lambda: state() == "identity_changed", timeout=25)
        detail = await database_sync_to_async(lambda: Host.objects.get(pk=host.pk).state_detail)()
        assert "different TLS certificate" in detail, detail
        # Nothing reached the impostor's HTTP layer: its request log is empty since it started.
        await asyncio.sleep(1)
        assert "GET /v1/events" not in agent.log_path.read_text()[len(log_before) :]
    finally:
        runner.cancel()
        for task in watch.watchers.values():
            task.cancel()
        await asyncio.gather(runner, *watch.watchers.values(), return_exceptions=True)
        await asyncio.to_thread(stop_agent, agent)
