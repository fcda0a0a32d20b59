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
    """Reaches are cached per user for a minute, but a grant or its removal clears the cache."""

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

    await database_sync_to_async(granted.delete)()
    await asyncio.sleep(0.3)
    await apublish(event)
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


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
