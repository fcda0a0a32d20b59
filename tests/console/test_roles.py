"""The console image's roles (console/roles.py) and the liveness endpoint its health check uses."""

from __future__ import annotations

from typing import Any

import pytest

from console.launcher import WEB_SOCKET_ARGS
from console.roles import command


def test_web_serves_with_the_console_s_websocket_settings_behind_the_proxy() -> None:
    argv = command("web", [], {"DOMUS_WEB_PORT": "8002"})
    assert argv[1:4] == ["-m", "uvicorn", "console.asgi:application"]
    assert argv[argv.index("--port") + 1] == "8002" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--proxy-headers" in argv and argv[argv.index("--forwarded-allow-ips") + 1] == "127.0.0.1"
    joined = " ".join(argv)
    assert " ".join(WEB_SOCKET_ARGS) in joined  # the same as make run's


def test_each_worker_and_shard_is_named_by_its_environment() -> None:
    worker = command("worker", [], {"DOMUS_WORKER_NAME": "worker-2", "DOMUS_WORKER_CONCURRENCY": "4"})
    assert (
        worker[worker.index("-n") + 1] == "worker-2@%h" and worker[worker.index("--concurrency") + 1] == "4"
    )
    assert command("hostwatch", [], {"DOMUS_HOSTWATCH_SHARD": "1/2"})[-2:] == ["--shard", "1/2"]
    assert command("manage", ["issue_token", "admin"], {})[-3:] == ["django", "issue_token", "admin"]


def test_an_unknown_role_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="unknown role 'webb'"):
        command("webb", [], {})


@pytest.mark.django_db
def test_livez_answers_without_asking_anything_else(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("console.health._database", lambda: (_ for _ in ()).throw(AssertionError("asked")))
    response = client.get("/livez")
    assert response.status_code == 200 and response.json() == {"ok": True}
