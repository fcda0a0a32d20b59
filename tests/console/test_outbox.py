"""The job outbox (console/jobs/dispatch.py): a job committed while the broker is away is
answered 202 and sent by the relay once the broker is back; one whose message went is not sent
again, unless the broker restarted empty."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kombu.exceptions import OperationalError
from rest_framework.test import APIClient

from console.jobs import dispatch
from console.jobs.models import Job
from console.jobs.services import job_enqueue
from domains.models import Domain
from hosts.models import Host

pytestmark = pytest.mark.django_db


class Broker:
    """Stands in for `run_job.apply_async`: takes messages while up, refuses them while down."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[int] = []

    def __call__(self, args: tuple[int], **options: Any) -> None:
        if not self.up:
            raise OperationalError("Error 111 connecting to redis.sock. Connection refused.")
        assert options.get("retry") is False  # a request never waits on an absent broker
        self.sent.append(args[0])


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    from console.jobs.tasks import run_job

    fake = Broker()
    monkeypatch.setattr(run_job, "apply_async", fake)
    monkeypatch.setattr(dispatch, "RELAY_GRACE_SECONDS", 0)
    monkeypatch.setattr(dispatch, "_broker_restarted", lambda: False)
    return fake


@pytest.fixture
def committed(django_capture_on_commit_callbacks: Any) -> Callable[[Callable[[], Any]], Any]:
    def run(fn: Callable[[], Any]) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return fn()

    return run


def test_a_job_is_sent_after_the_commit_and_marked(broker: Broker, committed: Any) -> None:
    job = committed(lambda: job_enqueue(kind="domain.start", actor=None, host=None))
    job.refresh_from_db()
    assert broker.sent == [job.pk] and job.dispatched_at is not None
    assert dispatch.relay_pending() == 0  # nothing left to relay
    assert broker.sent == [job.pk]


def test_broker_down_the_job_waits_in_the_outbox_then_the_relay_sends_it(
    broker: Broker, committed: Any
) -> None:
    broker.up = False
    job = committed(lambda: job_enqueue(kind="domain.start", actor=None, host=None))
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and job.dispatched_at is None
    assert dispatch.undispatched() == 1
    assert dispatch.relay_pending() == 0  # still down: nothing sent, nothing lost
    broker.up = True
    assert dispatch.relay_pending() == 1
    job.refresh_from_db()
    assert broker.sent == [job.pk] and job.dispatched_at is not None and dispatch.undispatched() == 0


def test_the_relay_stops_at_the_first_refusal_and_keeps_the_order(broker: Broker) -> None:
    jobs = [Job.objects.create(kind="domain.start") for _ in range(3)]
    broker.up = False
    assert dispatch.relay_pending() == 0
    broker.up = True
    assert dispatch.relay_pending() == 3
    assert broker.sent == [job.pk for job in jobs]


def test_a_broker_that_restarted_empty_gets_every_queued_job_again(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = Job.objects.create(kind="domain.start")
    dispatch.send(queued.pk)
    running = Job.objects.create(kind="domain.start", status=Job.Status.RUNNING)
    assert broker.sent == [queued.pk]
    monkeypatch.setattr(dispatch, "_broker_restarted", lambda: True)
    assert dispatch.relay_pending() == 1
    assert broker.sent == [queued.pk, queued.pk] and running.pk not in broker.sent


def test_a_missing_marker_is_how_a_restart_is_told(settings: Any) -> None:
    """Against the real (embedded) Redis: the marker a relay leaves there is gone after a
    restart or a flush; exactly one look notices."""
    settings.DOMUS_REDIS_PREFIX = f"domus:test-outbox-{uuid.uuid4().hex[:8]}"
    real = dispatch._broker_client(settings.REDIS_URL)
    try:
        assert dispatch._broker_restarted() is True  # the very first look
        assert dispatch._broker_restarted() is False
        real.delete(dispatch.broker_marker_key())  # what a restart of an embedded Redis does
        assert [dispatch._broker_restarted() for _ in range(2)] == [True, False]
    finally:
        real.delete(dispatch.broker_marker_key())


def test_api_create_during_a_broker_outage_is_accepted_and_runs_later(
    broker: Broker, api: APIClient, host: Host, committed: Any
) -> None:
    broker.up = False
    body = {"name": "web1", "host": host.pk, "boot": {"iso": "/var/lib/libvirt/images/x.iso"}}
    response = committed(lambda: api.post("/api/v1/domains/", body, format="json"))
    assert response.status_code == 202, response.content
    job_id = response.json()["job"]["id"]
    assert Domain.objects.filter(name="web1").exists() and broker.sent == []
    broker.up = True
    dispatch.relay_pending()
    assert broker.sent == [job_id]


def test_a_refused_request_leaves_nothing_to_run(
    broker: Broker, api: APIClient, host: Host, committed: Any
) -> None:
    body = {"name": "bad name!", "host": host.pk, "boot": {"iso": "/var/lib/libvirt/images/x.iso"}}
    response = committed(lambda: api.post("/api/v1/domains/", body, format="json"))
    assert response.status_code == 400
    assert not Job.objects.exists() and dispatch.relay_pending() == 0 and broker.sent == []
