"""The events WebSocket (inventory, lifecycle events, heartbeats) and the hub's fan-out."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter

from agent.client import AgentClient, AgentUnauthorized
from agent.events import SUBSCRIBER_QUEUE, EventHub
from agent.protocol import AgentEvent, DomainEvent, DomainSpec, HeartbeatEvent, InventoryEvent, KernelBoot
from tests.agent.conftest import RunningAgent

pytestmark = pytest.mark.asyncio
EVENT = TypeAdapter(AgentEvent)


async def next_event(ws: aiohttp.ClientWebSocketResponse, *, skip_heartbeats: bool = True) -> Any:
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        event = EVENT.validate_python(json.loads(msg.data))
        if skip_heartbeats and isinstance(event, HeartbeatEvent):
            continue
        return event


async def wait_for_domain_event(
    ws: aiohttp.ClientWebSocketResponse, domain_uuid: uuid.UUID, name: str
) -> DomainEvent:
    while True:
        event = await next_event(ws)
        if isinstance(event, DomainEvent) and event.uuid == domain_uuid and event.event == name:
            return event


async def test_inventory_then_lifecycle_events(test_agent: RunningAgent) -> None:
    spec = DomainSpec(uuid=uuid.uuid4(), name="evented", boot=KernelBoot(kernel="vmlinuz"))
    async with AgentClient(test_agent.url, test_agent.secret) as client:
        async with client.events() as ws1, client.events() as ws2:
            for ws in (ws1, ws2):
                inventory = await next_event(ws)
                assert isinstance(inventory, InventoryEvent)
                assert inventory.host.hypervisor == "test"
                assert "test" in {d.name for d in inventory.domains}
            await client.define(spec)
            await client.start(spec.uuid)
            for ws in (ws1, ws2):
                defined = await wait_for_domain_event(ws, spec.uuid, "defined")
                assert defined.name == "evented"
                started = await wait_for_domain_event(ws, spec.uuid, "started")
                assert started.state == "running"
            await client.destroy(spec.uuid)
            stopped = await wait_for_domain_event(ws1, spec.uuid, "stopped")
            assert stopped.state == "shutoff"  # persistent: still defined, shut off
            await client.delete(spec.uuid, delete_disks=True)
            undefined = await wait_for_domain_event(ws1, spec.uuid, "undefined")
            assert undefined.state is None


async def test_heartbeat_every_two_seconds(test_agent: RunningAgent) -> None:
    async with AgentClient(test_agent.url, test_agent.secret) as client, client.events() as ws:
        assert isinstance(await next_event(ws), InventoryEvent)
        beat = await asyncio.wait_for(next_event(ws, skip_heartbeats=False), timeout=5)
        assert isinstance(beat, HeartbeatEvent) and beat.ts > 0


async def test_events_need_auth(test_agent: RunningAgent) -> None:
    async with AgentClient(test_agent.url, "wrong") as client:
        with pytest.raises(AgentUnauthorized):
            async with client.events():
                pass


async def test_slow_subscriber_is_dropped_others_are_not() -> None:
    hub = EventHub()
    slow, fast = hub.subscribe(), hub.subscribe()
    for i in range(SUBSCRIBER_QUEUE + 1):
        hub.publish(HeartbeatEvent(ts=float(i)))
        while not fast.queue.empty():  # the fast one keeps up
            fast.queue.get_nowait()
    assert slow.dropped and hub.subscriber_count == 1
    assert slow.queue.get_nowait() is None  # its socket gets closed by the handler
    assert not fast.dropped
    hub.publish(HeartbeatEvent(ts=1.0))
    assert fast.queue.qsize() == 1
