"""Drills on the services under the console: Redis restarted mid-job (three times in a row, and
while 30 creates arrive at once), PostgreSQL restarted mid-job. The stack is `make run`'s, with its
own embedded Redis and, for the PostgreSQL drill, a PostgreSQL server of its own (the machine's is
not a drill's to restart).

What must hold: the worker survives (it is not even restarted: celery below 5.7, see
pyproject.toml), every job answered 202 ends exactly once and as it really went, a job accepted
while the broker was down starts seconds after it is back (the outbox), the API answers JSON 503s
naming what is down meanwhile, and nothing is duplicated or left "Being defined".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from console import embedded_redis
from tests.drills.conftest import DrillStack, assert_unique_in_libvirt, wait_for
from tests.drills.test_make_run import assert_nothing_being_defined, record, virsh_state
from tests.e2e.conftest import _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.drill]


def restart_redis(stack: DrillStack) -> float:
    """SIGKILL the embedded Redis (it keeps nothing: what it held is lost, as in a crash) and
    wait until the supervisor's new one answers; seconds it was away."""
    killed = time.monotonic()
    stack.kill("redis")
    socket_path = stack.data_dir / "redis.sock"
    wait_for(lambda: embedded_redis.answers(socket_path), "Redis answering again", timeout=20)
    return time.monotonic() - killed


def job_status(stack: DrillStack, job_id: int) -> str:
    try:
        return str(stack.api("GET", f"/api/v1/jobs/{job_id}/").json()["status"])
    except (requests.RequestException, ValueError, KeyError):
        return "(no answer)"


def test_redis_restarted_three_times_mid_job(drill_stack: DrillStack) -> None:
    stack = drill_stack
    stack.start()
    name, domain_id = stack.defined_guest()
    agent = stack.pid("agent")
    os.kill(agent, signal.SIGSTOP)  # the job waits inside its agent call through the restarts
    try:
        job = stack.api("POST", f"/api/v1/domains/{domain_id}/start/").json()["job"]
        wait_for(lambda: job_status(stack, job["id"]) == "running", "job running")
        away = [restart_redis(stack) for _ in range(3)]
    finally:
        os.kill(agent, signal.SIGCONT)
    ended = stack.wait_job(job["id"])
    assert ended["status"] == "succeeded", ended
    assert virsh_state(name) == "running"
    stack.wait_domain_state(domain_id, "running")
    assert stack.audit_finished(job["id"]) == 1
    parts = stack.state()["parts"]
    assert parts["worker"]["restarts"] == 0, "the worker died with a Redis restart"
    assert parts["redis"]["restarts"] == 3

    # A job accepted while Redis is away runs once it is back: seconds, not the 5-minute resend.
    stack.kill("redis")
    os.kill(stack.pid("agent"), signal.SIGSTOP)  # nothing may run before Redis is back
    try:
        later = stack.api("POST", f"/api/v1/domains/{domain_id}/force-off/")
    finally:
        os.kill(stack.pid("agent"), signal.SIGCONT)
    assert later.status_code == 202, later.text
    wait_for(lambda: embedded_redis.answers(stack.data_dir / "redis.sock"), "Redis back", timeout=20)
    back = time.monotonic()
    forced = stack.wait_job(later.json()["job"]["id"], timeout=60)
    assert forced["status"] == "succeeded", forced
    assert virsh_state(name) == "shut off"
    assert stack.audit_finished(forced["id"]) == 1
    assert_unique_in_libvirt(stack.name_prefix)
    record(
        "redis-restart-x3",
        redis_away_seconds=[round(s, 1) for s in away],
        worker_restarts=parts["worker"]["restarts"],
        job_accepted_while_down_done_after_seconds=round(time.monotonic() - back, 1),
        lost="nothing",
    )
    stack.stop()


def test_thirty_creates_at_once_while_redis_restarts(drill_stack: DrillStack) -> None:
    stack = drill_stack
    stack.start()
    names = [stack.new_name() for _ in range(30)]
    answers: dict[str, tuple[int, int] | str] = {}

    def create(name: str) -> None:
        try:
            answers[name] = stack.create_guest(name, start=False)
        except AssertionError as exc:
            answers[name] = str(exc)

    threads = [threading.Thread(target=create, args=(name,)) for name in names]
    for i, thread in enumerate(threads):
        thread.start()
        if i == 10:
            restart_redis(stack)
    for thread in threads:
        thread.join(60)
    refused = {name: answer for name, answer in answers.items() if isinstance(answer, str)}
    assert not refused, refused
    started = time.monotonic()
    jobs = {
        name: stack.wait_job(answer[1], timeout=180)
        for name, answer in answers.items()
        if not isinstance(answer, str)
    }
    assert {job["status"] for job in jobs.values()} == {"succeeded"}, [
        j for j in jobs.values() if j["status"] != "succeeded"
    ]
    assert all(stack.audit_finished(job["id"]) == 1 for job in jobs.values())
    assert assert_unique_in_libvirt(stack.name_prefix) == set(names)
    assert_nothing_being_defined(stack)
    record(
        "thirty-creates-redis-restart",
        all_done_seconds=round(time.monotonic() - started, 1),
        created=len(jobs),
    )
    stack.stop()


# -- PostgreSQL -----------------------------------------------------------------------------------
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), Path("/nonexistent"))


class PrivatePostgreSQL:
    """A PostgreSQL server of the drill's own (initdb in a scratch directory, as user postgres)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = _free_port()

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120
        )

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.root / "log"),
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/domus"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgreSQL]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("no PostgreSQL server binaries (scripts/bootstrap.sh installs Debian's postgresql)")
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, which user postgres cannot enter.
    root = Path(tempfile.mkdtemp(prefix="domus-drill-pg-"))
    root.chmod(0o755)
    server = PrivatePostgreSQL(root / "server")
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()  # unless the drill left it stopped
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_restarted_mid_job(drill_stack: DrillStack, private_postgres: PrivatePostgreSQL) -> None:
    stack = drill_stack
    stack.env["DATABASE_URL"] = private_postgres.url
    stack.start()
    name, domain_id = stack.defined_guest()
    agent = stack.pid("agent")
    os.kill(agent, signal.SIGSTOP)
    try:
        job = stack.api("POST", f"/api/v1/domains/{domain_id}/start/").json()["job"]
        wait_for(lambda: job_status(stack, job["id"]) == "running", "job running")
        down_at = time.monotonic()
        private_postgres.stop()
        # During the outage: JSON 503s that say the database is down, never an HTML 500.
        response = stack.api("GET", "/api/v1/domains/")
        assert response.status_code == 503 and response.json()["error"] == "unavailable", response.text
        assert "database" in response.json()["detail"].lower()
        health = requests.get(stack.url + "/healthz", timeout=10)
        assert health.status_code == 503 and "database" in health.json()["down"]
    finally:
        os.kill(agent, signal.SIGCONT)  # the job's call completes while the database is away
    time.sleep(3)
    private_postgres.start()
    back = time.monotonic()
    recovery = stack.wait_healthy(timeout=60)
    ended = stack.wait_job(job["id"], timeout=90)
    assert ended["status"] == "succeeded", ended
    assert virsh_state(name) == "running"
    stack.wait_domain_state(domain_id, "running")
    assert stack.audit_finished(job["id"]) == 1
    assert_nothing_being_defined(stack)
    record(
        "postgresql-restart",
        database_away_seconds=round(back - down_at, 1),
        healthy_after_back_seconds=round(recovery, 1),
        job_attempts=ended.get("attempts"),
        lost="nothing",
    )
    stack.stop()
