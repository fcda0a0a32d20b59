"""The live events WebSocket, through the real ASGI stack: each signed-in user hears only about
what they may see."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from console.access.models import Team
from console.asgi import application
from console.realtime.events import apublish
from domains.events import domain_event
from domains.models import Domain
from hosts.models import Host
from tests.asgi_socket import GoingSocket
from tests.conftest import grant

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(user: Any) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def test_events_reach_only_those_who_may_see(django_user_model: Any) -> None:
    def world() -> tuple[Any, list[Domain]]:
        host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret="x" * 32)
        a, b = Team.objects.create(name="A"), Team.objects.create(name="B")
        mine = Domain.objects.create(name="mine", host=host, team=a)
        theirs = Domain.objects.create(name="theirs", host=host, team=b)
        user = django_user_model.objects.create_user("ev", password="x-pass-1234")
        grant(user, "Viewer", a)
        return user, [mine, theirs]

    user, domains = await database_sync_to_async(world)()
    cookie = await database_sync_to_async(session_cookie)(user)
    communicator = WebsocketCommunicator(
        application, "/ws/events/", headers=[(b"cookie", cookie), (b"origin", b"http://127.0.0.1")]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    await asyncio.sleep(0.3)  # the pub/sub layer subscribes the group in the background
    for domain in reversed(domains):  # theirs first: it must be skipped, not merely late
        await apublish(await database_sync_to_async(domain_event)(domain))
    first = await communicator.receive_json_from(timeout=5)
    assert first["domain"]["name"] == "mine"
    assert await communicator.receive_nothing(timeout=1)
    await communicator.disconnect()


async def test_events_socket_refuses_a_stranger_origin(django_user_model: Any) -> None:
    user = await database_sync_to_async(django_user_model.objects.create_user)("ev2", password="x-pass-1234")
    cookie = await database_sync_to_async(session_cookie)(user)
    communicator = WebsocketCommunicator(
        application, "/ws/events/", headers=[(b"cookie", cookie), (b"origin", b"http://evil.example")]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert not connected


async def test_an_access_change_takes_effect_on_open_sockets_at_once(django_user_model: Any) -> None:
    """Reaches are cached per credential for a minute, but a grant or its removal clears the cache."""

    def world() -> tuple[Any, Domain, Team]:
        host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret="x" * 32)
        team = Team.objects.create(name="A")
        domain = Domain.objects.create(name="in-a", host=host, team=team)
        user = django_user_model.objects.create_user("late", password="x-pass-1234")
        return user, domain, team

    user, domain, team = await database_sync_to_async(world)()
    cookie = await database_sync_to_async(session_cookie)(user)
    communicator = WebsocketCommunicator(
        application, "/ws/events/", headers=[(b"cookie", cookie), (b"origin", b"http://127.0.0.1")]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    await asyncio.sleep(0.3)
    event = await database_sync_to_async(domain_event)(domain)
    await apublish(event)
    assert await communicator.receive_nothing(timeout=0.5)  # not theirs (and now cached so)

    granted = await database_sync_to_async(grant)(user, "Viewer", team)
    await asyncio.sleep(0.3)  # the access.changed event travels like any other
    await apublish(event)
    assert (await communicator.receive_json_from(timeout=5))["domain"]["name"] == "in-a"

    await database_sync_to_async(granted.delete)()  # the socket closes: see test_socket_credentials.py
    closed = await communicator.receive_output(timeout=5)
    assert (closed["type"], closed["code"]) == ("websocket.close", 4403)


async def test_events_reach_the_socket_without_a_database_cleanup_each(
    django_user_model: Any, db_cleanups: list[str]
) -> None:
    """Channels' clean-up before each message is a hop to the one sync thread, in a row for every
    socket an event reaches; event delivery skips it (console.realtime.dispatch)."""

    def world() -> tuple[Any, Domain]:
        host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret="x" * 32)
        team = Team.objects.create(name="A")
        domain = Domain.objects.create(name="seen", host=host, team=team)
        user = django_user_model.objects.create_user("ev3", password="x-pass-1234")
        grant(user, "Viewer", team)
        return user, domain

    user, domain = await database_sync_to_async(world)()
    cookie = await database_sync_to_async(session_cookie)(user)
    communicator = WebsocketCommunicator(
        application, "/ws/events/", headers=[(b"cookie", cookie), (b"origin", b"http://127.0.0.1")]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected and db_cleanups  # the connect keeps it
    await asyncio.sleep(0.3)
    db_cleanups.clear()
    event = await database_sync_to_async(domain_event)(domain)
    for _ in range(3):
        await apublish(event)
        assert (await communicator.receive_json_from(timeout=5))["domain"]["name"] == "seen"
    assert db_cleanups == []
    await communicator.disconnect()


async def test_sockets_closing_as_an_event_reaches_them_leave_nothing_in_the_channel_layer(
    django_user_model: Any,
) -> None:
    """Each socket has a channel of its own in the pub/sub layer: a queue in this process and a
    Redis subscription, which the layer drops only when a receive waiting on it is cancelled.
    A socket that closed just as an event reached it (a tab closed while the fleet is busy)
    left both for ever: Channels' consumer loop took the close first and dropped the finished
    receive, event and all (360 of 400 sockets closed during one publish did)."""
    import redis.asyncio
    from channels.layers import get_channel_layer
    from django.conf import settings

    user = await database_sync_to_async(django_user_model.objects.create_user)("ev4", password="x-pass-1234")
    cookie = await database_sync_to_async(session_cookie)(user)
    layer = get_channel_layer()
    assert layer is not None
    before = set(layer.channels)
    sockets = []
    for _ in range(10):
        communicator = WebsocketCommunicator(
            application, "/ws/events/", headers=[(b"cookie", cookie), (b"origin", b"http://127.0.0.1")]
        )
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        sockets.append(communicator)
    channels = set(layer.channels) - before  # the sockets' own
    assert len(channels) == len(sockets)
    event = layer.serialize({"type": "domus.event", "event": {"type": "host.removed", "host": {"id": 0}}})
    for channel in channels:  # an event has reached each (as the layer's reader hands it over) ...
        layer.channels[channel].put_nowait(event)
    await asyncio.gather(*(s.disconnect() for s in sockets))  # ... as each socket closes

    assert channels & set(layer.channels) == set()
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    try:
        subscribers = await client.pubsub_numsub(*channels)
    finally:
        await client.aclose()
    assert {count for _channel, count in subscribers} == {0}


async def test_a_socket_that_goes_as_an_event_is_sent_to_it_leaves_its_group(django_user_model: Any) -> None:
    """Sending to a browser that has just gone raises (uvicorn's ClientDisconnected, which it
    then swallows). That ended the consumer before its disconnect() left the events group, and
    the group kept its name for ever: a quarter of the sockets closed while events were on
    their way, each later event fanned out to all of them (bench/soak_bench.py)."""
    from channels.layers import get_channel_layer

    from console.realtime.events import EVENTS_GROUP

    def viewer() -> Any:
        user = django_user_model.objects.create_user("ev5", password="x-pass-1234")
        grant(user, "Viewer")  # sees every host
        return user

    user = await database_sync_to_async(viewer)()
    cookie = await database_sync_to_async(session_cookie)(user)
    layer = get_channel_layer()
    assert layer is not None
    before = set(layer.channels)
    socket = GoingSocket("/ws/events/", "", [(b"cookie", cookie), (b"origin", b"http://127.0.0.1")])
    await socket.connect()
    (channel,) = set(layer.channels) - before
    group = layer.groups[f"{layer.prefix}__group__{EVENTS_GROUP}"]
    assert channel in group

    socket.gone = True  # the browser has gone; an event reaches its socket before the close does
    await apublish({"type": "host.state", "host": {"id": 0, "name": "h", "state": "online", "teams": []}})
    await asyncio.sleep(0.5)
    await socket.close()
    assert channel not in group
