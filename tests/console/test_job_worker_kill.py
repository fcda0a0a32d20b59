"""A worker killed in the middle of a job (SIGKILL, a real Celery worker process) does not lose
it: another worker retries it once the lease lapses, the job finishes once, and the agent does
the job's action once (the retry's call carries the same idempotency key and is replayed).

The workers import this module (`celery worker -I tests.console.test_job_worker_kill`) for the
test-only handler below; they share the test database (a transactional test: the rows are
committed) and the test Redis, under this console's instance name, with short lease settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

from console.jobs.models import Job
from console.jobs.runner import JobContext, JobFailed, job_handler
from console.jobs.services import job_enqueue
from domains.models import Domain
from hosts.agent import run_agent
from hosts.models import Host
from tests.agent.conftest import RunningAgent

ROOT = Path(__file__).resolve().parents[2]
KIND = "test.pause_then_wait"


@job_handler(KIND)
def pause_then_wait(ctx: JobContext) -> dict[str, Any]:
    """Pause the domain on its agent, then wait for the test to release the job. Each run
    appends its attempt number to `invocations`, so the test sees the handler ran twice."""
    workdir = Path(ctx.params["dir"])
    with (workdir / "invocations").open("a") as out:
        out.write(f"{ctx.job.attempts}\n")
    domain = ctx.job.domain
    assert domain is not None
    info = run_agent(domain.host, lambda client: client.suspend(domain.uuid), job_id=ctx.job.pk)
    ctx.progress(50, f"{domain.name} is {info.state}; waiting for the test")
    (workdir / f"waiting-{ctx.job.attempts}").touch()
    deadline = time.monotonic() + 60
    while not (workdir / "release").exists():
        if time.monotonic() > deadline:
            raise JobFailed("The test never released this job.")
        time.sleep(0.05)
    return {"state": info.state}


def _database_url() -> str:
    db = connection.settings_dict  # the test database's, once pytest-django has set it up
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "")
    password = quote(db.get("PASSWORD") or "")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{credentials}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class Workers:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "DOMUS_INSTANCE": settings.DOMUS_INSTANCE,  # its queue: derived from the database otherwise
            "REDIS_URL": settings.REDIS_URL,
            "DOMUS_JOB_LEASE_SECONDS": "3",
            "DOMUS_JOB_LEASE_RENEW_SECONDS": "0.5",
            "DOMUS_JOB_SWEEP_SECONDS": "0.5",
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, name: str) -> subprocess.Popen[bytes]:
        with (self.workdir / f"worker-{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "console", "worker"),
                    *("--pool", "threads", "--concurrency", "2", "--loglevel", "INFO"),
                    *("-n", f"kill-test-{name}-{os.getpid()}@%h", "--without-mingle", "--without-gossip"),
                    *("-I", __name__),  # the handler above
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.workdir.glob("worker-*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    group = Workers(tmp_path)
    yield group
    group.stop()  # before the test database goes away


def wait_until(check: Callable[[], bool], what: str, workers: Workers, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout:.0f} s; worker logs:\n{workers.logs()}")
        time.sleep(0.1)


@pytest.mark.django_db(transaction=True)
def test_a_job_outlives_a_killed_worker_and_is_done_once(
    tmp_path: Path, driver_agent: RunningAgent, workers: Workers
) -> None:
    host = Host.objects.create(
        name="kill-test", url=driver_agent.url, secret=driver_agent.secret, state=Host.State.ONLINE
    )
    found = next(d for d in run_agent(host, lambda client: client.list_domains()) if d.name == "test")
    assert found.state == "running"
    domain = Domain.objects.create(name="test", host=host, uuid=found.uuid, state=Domain.State.RUNNING)

    first = workers.start("one")
    job = job_enqueue(kind=KIND, actor=None, host=host, domain=domain, params={"dir": str(tmp_path)})
    wait_until((tmp_path / "waiting-1").exists, "attempt 1 reaching its wait", workers)

    os.kill(first.pid, signal.SIGKILL)  # mid-job: no chance to clean up or acknowledge
    first.wait(10)
    (tmp_path / "release").touch()  # whatever runs the job next need not wait
    workers.start("two")

    def finished() -> bool:
        job.refresh_from_db()
        return job.is_finished

    wait_until(finished, "the job finishing", workers)
    assert job.status == Job.Status.SUCCEEDED, job.log + job.error
    assert job.attempts == 2 and job.result == {"state": "paused"}
    assert "Worker lost; retrying (attempt 2 of 3)" in job.log
    assert (tmp_path / "invocations").read_text().split() == ["1", "2"]  # the handler ran twice...

    # ... and the agent paused the domain once: the retry's call was answered from memory.
    path = f"/v1/domains/{domain.uuid}/suspend"
    agent_log = driver_agent.log()
    assert agent_log.count(f"POST {path} 200") == 2, agent_log
    assert agent_log.count(f"replayed the answer to POST {path} (Idempotency-Key: job-{job.pk}:") == 1
    assert run_agent(host, lambda client: client.get_domain(domain.uuid)).state == "paused"
