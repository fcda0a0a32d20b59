"""Cancelling a job: a queued one at once, a running one where its kind can stop half-way (by
whom, when it is refused, and what it undoes)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from rest_framework.test import APIClient

from agent.protocol import DomainInfo, DomainSpec
from console.audit.models import AuditEvent
from console.jobs.models import Job
from console.jobs.runner import CANCELLABLE, HANDLERS, JobCancelled, JobContext, job_handler, job_run
from console.jobs.services import job_cancel, job_enqueue
from domains import jobs as domain_jobs  # noqa: F401  (registers the domain job handlers)
from domains.models import Domain
from hosts import agent as host_agent
from hosts.models import Host
from tests.conftest import grant

pytestmark = pytest.mark.django_db


def job_run_in_thread(job_id: int) -> None:
    """job_run as a second worker would: in its own thread, with its own connection."""
    try:
        job_run(job_id)
    finally:
        connections.close_all()


def queued(host: Host, user: Any, kind: str = "domain.start") -> Job:
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.SHUTOFF)
    return job_enqueue(kind=kind, actor=user, host=host, domain=domain)


def test_cancel_a_queued_job_and_the_worker_then_skips_it(api: APIClient, host: Host, user: Any) -> None:
    job = queued(host, user)
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled" and response.json()["step"] == "Cancelled by ana"
    job_run(job.pk)  # the message reaches a worker anyway
    job.refresh_from_db()
    assert job.status == "cancelled" and job.attempts == 0 and job.started_at is None
    assert AuditEvent.objects.filter(action="job.cancel").count() == 1


def test_a_running_job_that_cannot_stop_or_a_finished_one_is_refused(
    api: APIClient, host: Host, user: Any
) -> None:
    job = queued(host, user)  # domain.start: one agent call, not cancellable half-way
    for status, why in (("running", "cannot be stopped half-way"), ("succeeded", "nothing to cancel")):
        Job.objects.filter(pk=job.pk).update(status=status)
        response = api.post(f"/api/v1/jobs/{job.pk}/cancel/")
        assert response.status_code == 409
        assert f"is {status}" in response.json()["detail"] and why in response.json()["detail"]
    job.refresh_from_db()
    assert not job.cancel_requested


@pytest.fixture
def stoppable() -> Iterator[None]:
    @job_handler("test.stoppable", cancellable=True)
    def handler(ctx: JobContext) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if ctx.cancel_requested():
                raise JobCancelled("Stopped at a safe point; nothing was left half done.")
            time.sleep(0.05)

    yield
    HANDLERS.pop("test.stoppable")
    CANCELLABLE.discard("test.stoppable")


def test_cancelling_a_running_cancellable_job_asks_it_to_stop(
    api: APIClient, host: Host, user: Any, stoppable: None
) -> None:
    job = Job.objects.create(kind="test.stoppable", host=host, actor=user, status="running", attempts=1)
    assert api.get(f"/api/v1/jobs/{job.pk}/").json()["cancellable"] is True
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "running" and body["cancel_requested"] is True and body["cancellable"] is False
    assert body["step"] == "Cancelling (requested by ana)" and "Cancelling (requested by ana)" in body["log"]
    assert AuditEvent.objects.filter(action="job.cancel", object_id=str(job.pk)).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_running_job_stops_at_its_next_safe_point(
    host: Host, user: Any, stoppable: None, settings: Any
) -> None:
    settings.DOMUS_JOB_CANCEL_CHECK_SECONDS = 0.05
    job = Job.objects.create(kind="test.stoppable", host=host, actor=user)
    worker = threading.Thread(target=job_run_in_thread, args=(job.pk,))
    worker.start()
    deadline = time.monotonic() + 5
    while Job.objects.get(pk=job.pk).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job_cancel(job=Job.objects.get(pk=job.pk), actor=user)
    worker.join(30)
    job.refresh_from_db()
    # Cancelled, not succeeded: uncancelled, the handler would have run its 10 s and returned.
    assert job.status == "cancelled" and job.finished_at is not None
    assert job.step == "Stopped at a safe point; nothing was left half done."
    assert "Cancelling (requested by ana)" in job.log and "Stopped at a safe point" in job.log


class FakeShutdownAgent:
    """The agent as seen by domain.shutdown: the guest ignores the ACPI request."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def info(self, domain: Domain) -> DomainInfo:
        return DomainInfo(uuid=domain.uuid, name=domain.name, state="running", vcpus=1, memory_mib=64)

    async def shutdown(self, domain_uuid: Any, *, press: int = 1) -> DomainInfo:
        self.calls.append("shutdown")
        return self.info(self.domain)

    async def get_domain(self, domain_uuid: Any) -> DomainInfo:
        self.calls.append("get")
        return self.info(self.domain)


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_shutdown_stops_the_wait_and_says_the_request_was_sent(
    api: APIClient, host: Host, user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.DOMUS_SHUTDOWN_TIMEOUT_SECONDS = 8  # uncancelled, it would fail after this
    settings.DOMUS_JOB_CANCEL_CHECK_SECONDS = 0.05
    domain = Domain.objects.create(name="web", host=host, state=Domain.State.RUNNING)
    agent = FakeShutdownAgent()
    agent.domain = domain  # type: ignore[attr-defined]
    job_ids: list[int | None] = []

    def fake_run_agent(host: Host, op: Any, *, timeout: float = 30, job_id: int | None = None) -> Any:
        job_ids.append(job_id)
        return asyncio.run(op(agent))

    monkeypatch.setattr(host_agent, "run_agent", fake_run_agent)
    job = Job.objects.create(kind="domain.shutdown", actor=user, host=host, domain=domain)
    worker = threading.Thread(target=job_run_in_thread, args=(job.pk,))
    worker.start()
    deadline = time.monotonic() + 5
    while agent.calls.count("get") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 200, response.content
    worker.join(30)
    job.refresh_from_db()
    # Cancelled, not failed: it stopped waiting rather than timing out after 8 s.
    assert job.status == "cancelled", job.log
    assert "ACPI shutdown request was already sent" in job.step and "Stopped waiting for web" in job.step
    assert agent.calls[0] == "shutdown" and agent.calls.count("shutdown") == 1
    assert set(job_ids) == {job.pk}  # the agent calls carry the job's id (the idempotency key)


def test_cancelling_a_create_forgets_the_domain_that_was_never_defined(
    api: APIClient, host: Host, user: Any
) -> None:
    body = {"name": "never", "host": host.pk, "boot": {"iso": "/var/lib/libvirt/images/x.iso"}}
    created = api.post("/api/v1/domains/", body, format="json").json()
    assert api.post(f"/api/v1/jobs/{created['job']['id']}/cancel/").status_code == 200
    assert not Domain.objects.filter(name="never").exists()


def test_others_need_the_jobs_permission(host: Host, user: Any, django_user_model: Any) -> None:
    job = queued(host, user)
    viewer = django_user_model.objects.create_user("vi", password="pw-vi-123456")
    grant(viewer, "Viewer")
    operator = django_user_model.objects.create_user("op", password="pw-op-123456")
    grant(operator, "Operator")
    for who, status in ((viewer, 403), (operator, 200)):
        client = APIClient()
        client.force_authenticate(who)
        assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == status


def test_jobs_filter_by_domain_host_actor_and_status(api: APIClient, host: Host, user: Any) -> None:
    other_host = Host.objects.create(name="h2", url="http://127.0.0.1:2", secret="y" * 32)
    a = Domain.objects.create(name="a", host=host, state=Domain.State.SHUTOFF)
    b = Domain.objects.create(name="b", host=other_host, state=Domain.State.SHUTOFF)
    job_a = job_enqueue(kind="domain.start", actor=user, host=host, domain=a)
    job_b = job_enqueue(kind="domain.start", actor=None, host=other_host, domain=b)
    Job.objects.filter(pk=job_b.pk).update(status="failed")

    def ids(query: str) -> set[int]:
        response = api.get(f"/api/v1/jobs/?{query}")
        assert response.status_code == 200, response.content
        return {job["id"] for job in response.json()["results"]}

    assert ids(f"domain={a.pk}") == {job_a.pk}
    assert ids(f"host={other_host.pk}") == {job_b.pk}
    assert ids("actor=ana") == {job_a.pk}
    assert ids("status=failed") == {job_b.pk}
    assert ids(f"status=queued&host={host.pk}") == {job_a.pk}
    bad = api.get("/api/v1/jobs/?status=done")
    assert bad.status_code == 400 and "status" in bad.json()["fields"]
    assert api.get("/api/v1/jobs/?domain=x").status_code == 400


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_create_defines_it_whole_and_does_not_start_it(
    host: Host, user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.DOMUS_JOB_CANCEL_CHECK_SECONDS = 0.05
    domain = Domain.objects.create(name="web", host=host, state=Domain.State.NEW, created_by=user)
    spec = DomainSpec.model_validate(
        {"uuid": domain.uuid, "name": "web", "boot": {"kind": "pxe"}, "nics": [{}]}
    )
    domain.spec = spec.model_dump(mode="json")
    domain.save()
    defining = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    class SlowDefine:
        async def define(self, spec: Any) -> DomainInfo:
            calls.append("define")
            defining.set()
            await asyncio.to_thread(release.wait, 30)  # volumes being allocated
            return DomainInfo(uuid=domain.uuid, name="web", state="shutoff", vcpus=1, memory_mib=64)

        async def start(self, domain_uuid: Any) -> DomainInfo:
            calls.append("start")
            return DomainInfo(uuid=domain.uuid, name="web", state="running", vcpus=1, memory_mib=64)

    monkeypatch.setattr(host_agent, "run_agent", lambda host, op, **kw: asyncio.run(op(SlowDefine())))
    job = Job.objects.create(
        kind="domain.create", actor=user, host=host, domain=domain, params={"start": True}
    )
    worker = threading.Thread(target=job_run_in_thread, args=(job.pk,))
    worker.start()
    assert defining.wait(10)
    job_cancel(job=Job.objects.get(pk=job.pk), actor=user)
    # The define is not interrupted; once it is over, the keeper has seen the cancel.
    deadline = time.monotonic() + 10
    while not Job.objects.get(pk=job.pk).cancel_requested and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # ten of the lease keeper's 0.05 s checks: it has raised its flag
    release.set()
    worker.join(30)
    job.refresh_from_db()
    assert job.status == "cancelled" and "not started" in job.step, job.log
    assert calls == ["define"]
    domain.refresh_from_db()
    assert domain.state == "shutoff"  # defined, whole, and known to the console


class FakeSlowBootAgent:
    """A guest that is still booting: it loses the first `deaf` presses of the power button."""

    def __init__(self, domain: Domain, deaf: int) -> None:
        self.domain, self.deaf = domain, deaf
        self.presses: list[int] = []
        self.off = False

    def info(self) -> DomainInfo:
        state = "shutoff" if self.off else "running"
        return DomainInfo(uuid=self.domain.uuid, name=self.domain.name, state=state, vcpus=1, memory_mib=64)

    async def shutdown(self, domain_uuid: Any, *, press: int = 1) -> DomainInfo:
        self.presses.append(press)
        if len(self.presses) > self.deaf:
            self.off = True
        return self.info()

    async def get_domain(self, domain_uuid: Any) -> DomainInfo:
        return self.info()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("deaf, succeeds", [(0, True), (2, True), (99, False)])
def test_a_shutdown_presses_the_button_again_while_it_waits(
    host: Host, user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, deaf: int, succeeds: bool
) -> None:
    settings.DOMUS_SHUTDOWN_TIMEOUT_SECONDS = 4
    settings.DOMUS_SHUTDOWN_RESEND_SECONDS = 1
    domain = Domain.objects.create(name="web", host=host, state=Domain.State.RUNNING)
    agent = FakeSlowBootAgent(domain, deaf)
    monkeypatch.setattr(host_agent, "run_agent", lambda host, op, **kw: asyncio.run(op(agent)))
    job = Job.objects.create(kind="domain.shutdown", actor=user, host=host, domain=domain)
    job_run_in_thread(job.pk)
    job.refresh_from_db()
    assert (job.status == "succeeded") is succeeds, job.log
    assert agent.presses == list(range(1, len(agent.presses) + 1))  # each press its own request
    if succeeds:
        assert len(agent.presses) == deaf + 1
        assert ("again (3)" in job.log) is (deaf == 2), job.log
    else:
        assert 3 <= len(agent.presses) <= 5 and "asked" in job.error, job.error
