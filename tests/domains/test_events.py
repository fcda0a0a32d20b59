"""Each service publishes its event to browsers, once its transaction commits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.layers import get_channel_layer

from agent.protocol import DomainInfo
from console.realtime.events import EVENTS_GROUP
from domains.models import Domain
from domains.services import domain_create, domain_forget, domain_observe
from hosts.models import Host

pytestmark = pytest.mark.django_db(transaction=True)


class Listener:
    """A test channel in the browsers' group, on the real channel layer."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.loop = asyncio.new_event_loop()
        self.channel = self.loop.run_until_complete(self.layer.new_channel())
        self.loop.run_until_complete(self.layer.group_add(EVENTS_GROUP, self.channel))

    def events(self, count: int) -> list[dict[str, Any]]:
        async def take() -> list[dict[str, Any]]:
            taken: list[dict[str, Any]] = []
            while len(taken) < count:
                event = (await self.layer.receive(self.channel))["event"]
                if event["type"] != "access.changed":  # the fixtures' grants make those
                    taken.append(event)
            return taken

        return self.loop.run_until_complete(asyncio.wait_for(take(), 5))

    def close(self) -> None:
        self.loop.run_until_complete(self.layer.group_discard(EVENTS_GROUP, self.channel))
        self.loop.run_until_complete(self.layer.flush())
        self.loop.close()


@pytest.fixture
def listener() -> Any:
    listener = Listener()
    yield listener
    listener.close()


def test_domain_create_publishes_job_and_domain(listener: Listener, host: Host, user: Any) -> None:
    data = {"name": "ev1", "boot": {"iso": "/var/lib/libvirt/images/x.iso"}}
    domain, job = domain_create(actor=user, host=host, data=data)
    events = listener.events(2)
    assert {e["type"] for e in events} == {"job.updated", "domain.state"}
    by_type = {e["type"]: e for e in events}
    assert by_type["domain.state"]["domain"]["id"] == domain.pk
    assert by_type["domain.state"]["domain"]["state"] == "new"
    assert by_type["job.updated"]["job"]["id"] == job.pk


def test_observed_state_change_publishes_once(listener: Listener, host: Host) -> None:
    domain = Domain.objects.create(name="ev2", host=host, state=Domain.State.SHUTOFF, vcpus=1, memory_mib=128)
    info = DomainInfo(uuid=domain.uuid, name="ev2", state="running", vcpus=1, memory_mib=128)
    domain_observe(host=host, info=info)
    domain_observe(host=host, info=info)  # no change: no event
    domain_id = domain.pk
    domain_forget(domain=domain)
    events = listener.events(2)
    assert events[0]["type"] == "domain.state" and events[0]["domain"]["state"] == "running"
    assert events[1] == {
        "type": "domain.deleted",
        "domain": {"id": domain_id, "name": "ev2", "host": host.pk, "team": None},
    }
