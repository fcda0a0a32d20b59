"""Jobs through faults, against a real agent on libvirt's test driver:

- an unreachable agent is waited for, with backoff and a line in the job's log per wait, until
  the job's deadline; an agent that comes back in time finishes the job;
- a handler that stops on an error saying nothing of what happened (a crash, a connection that
  broke half-way) has the domain's real state read back before the job's outcome is decided;
- a create that fails leaves the domain "create failed" with the reason, to retry or delete.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.client import AgentClient
from console.jobs.models import Job
from console.jobs.runner import HANDLERS, VERIFY, JobContext, job_handler, job_run
from domains.jobs import _verify_state
from domains.models import Domain
from domains.specs import build_spec
from hosts.agent import run_agent
from hosts.models import Host
from tests.agent.conftest import RunningAgent, free_port, launch_agent, stop_agent
from tests.conftest import host_facts

pytestmark = pytest.mark.django_db


def driver_domain(host: Host) -> Domain:
    """The test driver's own running domain, "test", as the console would have recorded it."""
    found = next(d for d in run_agent(host, lambda client: client.list_domains()) if d.name == "test")
    return Domain.objects.create(name="test", host=host, uuid=found.uuid, state=Domain.State.RUNNING)


def state_of(host: Host, domain: Domain) -> str:
    async def read(client: AgentClient) -> str:
        return (await client.get_domain(domain.uuid)).state

    return run_agent(host, read)


def test_an_agent_that_comes_back_in_time_finishes_the_job(tmp_path: Path) -> None:
    port = free_port()
    secret = "a-secret-for-the-late-agent-0123"
    host = Host.objects.create(name="late", url=f"http://127.0.0.1:{port}", secret=secret, state="online")
    pool = tmp_path / "pool"
    pool.mkdir()
    started: list[RunningAgent] = []

    def start_late() -> None:
        time.sleep(2.5)  # the job has tried (and waited) twice by then
        started.append(
            launch_agent(
                uri="test:///default",
                pool_dir=pool,
                log_path=tmp_path / "agent.log",
                port=port,
                secret=secret,
            )
        )

    starter = threading.Thread(target=start_late)
    starter.start()
    # The uuid of the driver's "test" domain is fixed; the row is made before the agent is up.
    domain = Domain.objects.create(
        name="test", host=host, uuid="6695eb01-f6a4-8304-79aa-97f2502e193f", state=Domain.State.RUNNING
    )
    job = Job.objects.create(kind="domain.force_off", domain=domain, host=host)
    try:
        job_run(job.pk)
    finally:
        starter.join()
        for running in started:
            stop_agent(running)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.log
    assert "late: agent at http://127.0.0.1" in job.log and "retrying in 1 s" in job.log
    assert "retrying in 2 s" in job.log and "late's agent answers again" in job.log


def test_an_agent_unreachable_until_the_deadline_fails_the_job_saying_so(settings: Any) -> None:
    settings.DOMUS_JOB_DEADLINE_SECONDS = 2.5
    host = Host.objects.create(
        name="gone", url=f"http://127.0.0.1:{free_port()}", secret="x" * 32, state="online"
    )
    domain = Domain.objects.create(name="web", host=host, state=Domain.State.RUNNING)
    job = Job.objects.create(kind="domain.start", domain=domain, host=host)
    started = time.monotonic()
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert time.monotonic() - started >= 2.0  # it did wait, it did not fail at the first refusal
    assert "gone: agent at" in job.error and "gave up at the job's deadline" in job.error
    assert job.log.count("retrying in") >= 2


@pytest.fixture
def crashing_handlers() -> Iterator[None]:
    """Kinds that force the domain off (or not) and then crash, as a lost Redis connection did."""

    @job_handler("test.off_then_crash", verify=_verify_state("shutoff", verb="forced off"))
    def off_then_crash(ctx: JobContext) -> None:
        domain = ctx.job.domain
        assert domain is not None
        run_agent(domain.host, lambda client: client.destroy(domain.uuid), job_id=ctx.job.pk)
        raise redis.ConnectionError("Connection closed by server.")

    @job_handler("test.crash_before", verify=_verify_state("shutoff", verb="forced off"))
    def crash_before(ctx: JobContext) -> None:
        raise redis.ConnectionError("Connection closed by server.")

    yield
    for kind in ("test.off_then_crash", "test.crash_before"):
        HANDLERS.pop(kind)
        VERIFY.pop(kind)


def test_a_job_that_crashed_after_doing_its_work_succeeded(
    driver_agent: RunningAgent, crashing_handlers: None
) -> None:
    host = Host.objects.create(name="h", url=driver_agent.url, secret=driver_agent.secret, state="online")
    domain = driver_domain(host)
    job = Job.objects.create(kind="test.off_then_crash", domain=domain, host=host)
    job_run(job.pk)
    job.refresh_from_db()
    assert state_of(host, domain) == "shutoff"
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert "Interrupted half-way (ConnectionError: Connection closed by server.)" in job.log
    assert "read back the state: test is shutoff" in job.log
    domain.refresh_from_db()
    assert domain.state == Domain.State.SHUTOFF  # what was read back is recorded


def test_a_job_that_crashed_before_doing_its_work_failed_saying_the_real_state(
    driver_agent: RunningAgent, crashing_handlers: None
) -> None:
    host = Host.objects.create(name="h", url=driver_agent.url, secret=driver_agent.secret, state="online")
    domain = driver_domain(host)
    job = Job.objects.create(kind="test.crash_before", domain=domain, host=host)
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "Internal error (ConnectionError)" in job.error
    assert "Read back from the host: test is running, so it was not forced off." in job.error


def create_job(host: Host, **boot: Any) -> tuple[Domain, Job]:
    data = {"name": "web1", "memory_mib": 64, "boot": {"kind": "kernel", **boot}}
    spec = build_spec(data, host)
    domain = Domain.objects.create(
        name="web1", host=host, uuid=spec.uuid, spec=spec.model_dump(mode="json"), state=Domain.State.NEW
    )
    return domain, Job.objects.create(kind="domain.create", domain=domain, host=host, params={"start": False})


def test_a_failed_create_is_shown_failed_with_the_reason_and_can_be_retried(
    driver_agent: RunningAgent, user: Any, api: Any
) -> None:
    host = Host.objects.create(
        name="h",
        url=driver_agent.url,
        secret=driver_agent.secret,
        state="online",
        facts=host_facts(default_pool_path=str(driver_agent.pool_dir)),
    )
    domain, job = create_job(host, kernel=str(driver_agent.pool_dir / "no-such-kernel"))
    job_run(job.pk)
    job.refresh_from_db()
    domain.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert domain.state == Domain.State.FAILED and "no-such-kernel" in domain.failure, domain.failure
    shown = api.get(f"/api/v1/domains/{domain.pk}/").json()
    assert shown["state"] == "failed" and shown["state_label"] == "Create failed" and shown["failure"]
    assert api.post(f"/api/v1/domains/{domain.pk}/start/").status_code == 409  # retry or delete only

    (driver_agent.pool_dir / "no-such-kernel").write_bytes(b"a kernel, now")
    response = api.post(f"/api/v1/domains/{domain.pk}/retry-create/", {}, format="json")
    assert response.status_code == 202, response.content
    domain.refresh_from_db()
    assert domain.state == Domain.State.NEW and domain.failure == ""
    job_run(response.json()["job"]["id"])
    domain.refresh_from_db()
    assert domain.state == Domain.State.SHUTOFF  # defined on the host this time
