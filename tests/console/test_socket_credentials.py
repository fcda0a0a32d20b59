"""The events socket obeys the credential that opened it: what a token narrowed to some
permissions may see (not what its user may), and it closes with 4403 and the reason when that
credential ends: a token revoked or expired, a sign-out, a session that lapsed, the user
disabled, a grant withdrawn (console sockets: tests/domains/test_console_revocation.py).
Through the real ASGI stack and channel layer."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from importlib import import_module
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.utils import timezone

from console.access.models import Grant, Team
from console.access.services import api_token_issue, api_token_revoke
from console.asgi import application
from console.realtime import credentials
from console.realtime.consumers import reach_cache
from console.realtime.events import apublish
from domains.events import domain_event
from domains.models import Domain
from hosts.events import host_event
from hosts.models import Host
from tests.conftest import grant

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1")


def _world(django_user_model: Any) -> tuple[Any, Domain]:
    host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret="x" * 32)
    team = Team.objects.create(name="A")
    domain = Domain.objects.create(name="in-a", host=host, team=team)
    user = django_user_model.objects.create_user("viewer", password="v-pass-1234")
    grant(user, "Viewer", team)  # domain.view and host.view in team A
    return user, domain


def _session(user: Any) -> tuple[Client, bytes]:
    client = Client()
    client.force_login(user)
    return client, f"sessionid={client.cookies['sessionid'].value}".encode()


async def _open(headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=[*headers, ORIGIN])
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    await asyncio.sleep(0.3)  # the pub/sub layer subscribes the group in the background
    return communicator


def _token_header(key: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Token {key}".encode())


async def _closed_with(communicator: WebsocketCommunicator) -> tuple[int, str]:
    message = await communicator.receive_output(timeout=10)
    assert message["type"] == "websocket.close", message
    return message["code"], message.get("reason", "")


@pytest.mark.parametrize("token_first", [True, False])
async def test_a_token_narrowed_to_host_view_hears_no_domain_of_its_user(
    django_user_model: Any, token_first: bool
) -> None:
    """One user, two sockets: one opened with a token narrowed to host.view, one with the
    browser's session. Each hears what its own credential may see, whichever opened first."""
    user, domain = await database_sync_to_async(_world)(django_user_model)
    _client, cookie = await database_sync_to_async(_session)(user)
    _token, key = await database_sync_to_async(api_token_issue)(user=user, permissions=["host.view"])
    reach_cache.invalidate()
    if token_first:
        narrow = await _open([_token_header(key)])
        full = await _open([(b"cookie", cookie)])
    else:
        full = await _open([(b"cookie", cookie)])
        narrow = await _open([_token_header(key)])

    await apublish(await database_sync_to_async(domain_event)(domain))
    assert (await full.receive_json_from(timeout=5))["domain"]["name"] == "in-a"
    assert await narrow.receive_nothing(timeout=1)
    host = await database_sync_to_async(Host.objects.get)(pk=domain.host_id)
    await apublish(await database_sync_to_async(host_event)(host))  # what the token may see
    assert (await narrow.receive_json_from(timeout=5))["type"] == "host.state"
    assert (await full.receive_json_from(timeout=5))["type"] == "host.state"
    await narrow.disconnect()
    await full.disconnect()


async def test_revoking_the_token_closes_its_events_socket(django_user_model: Any) -> None:
    user, _domain = await database_sync_to_async(_world)(django_user_model)
    token, key = await database_sync_to_async(api_token_issue)(user=user)
    _other, other_key = await database_sync_to_async(api_token_issue)(user=user, name="other")
    socket, other = await _open([_token_header(key)]), await _open([_token_header(other_key)])
    await database_sync_to_async(api_token_revoke)(token=token, actor=user)
    assert await _closed_with(socket) == (4403, "the API token was revoked")
    assert await other.receive_nothing(timeout=1)  # the user's other token still holds
    await other.disconnect()


async def test_a_token_s_events_socket_closes_when_the_token_expires(django_user_model: Any) -> None:
    """An expiry makes no event: the socket wakes at its token's expiry."""
    user, _domain = await database_sync_to_async(_world)(django_user_model)
    expires = timezone.now() + timedelta(seconds=1.5)
    _token, key = await database_sync_to_async(api_token_issue)(user=user, expires_at=expires)
    socket = await _open([_token_header(key)])
    assert await _closed_with(socket) == (4403, "the API token expired")
    assert timezone.now() >= expires


async def test_signing_out_closes_the_events_sockets_of_that_session(django_user_model: Any) -> None:
    user, _domain = await database_sync_to_async(_world)(django_user_model)
    client, cookie = await database_sync_to_async(_session)(user)
    _elsewhere, other_cookie = await database_sync_to_async(_session)(user)  # another browser
    mine, other = await _open([(b"cookie", cookie)]), await _open([(b"cookie", other_cookie)])
    await database_sync_to_async(client.post)("/logout/")
    assert await _closed_with(mine) == (4403, "signed out")
    assert await other.receive_nothing(timeout=1)
    await other.disconnect()


async def test_a_session_that_lapsed_closes_its_events_socket(
    django_user_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that expires (or is deleted behind the console's back) makes no event: each
    socket checks again every RECHECK_SECONDS."""
    monkeypatch.setattr(credentials, "RECHECK_SECONDS", 0.5)
    user, _domain = await database_sync_to_async(_world)(django_user_model)
    client, cookie = await database_sync_to_async(_session)(user)
    socket = await _open([(b"cookie", cookie)])
    assert await socket.receive_nothing(timeout=1.2)  # checked, still valid: left open
    store = import_module(settings.SESSION_ENGINE).SessionStore(client.cookies["sessionid"].value)
    await database_sync_to_async(store.delete)()
    assert await _closed_with(socket) == (4403, "your session ended")


async def test_disabling_the_user_closes_their_events_sockets(django_user_model: Any) -> None:
    user, _domain = await database_sync_to_async(_world)(django_user_model)
    _client, cookie = await database_sync_to_async(_session)(user)
    _token, key = await database_sync_to_async(api_token_issue)(user=user)
    by_session, by_token = await _open([(b"cookie", cookie)]), await _open([_token_header(key)])
    user.is_active = False
    await database_sync_to_async(user.save)()
    assert await _closed_with(by_session) == (4403, "your account was disabled")
    assert await _closed_with(by_token) == (4403, "your account was disabled")


async def test_a_grant_withdrawn_closes_the_socket_and_a_grant_given_does_not(django_user_model: Any) -> None:
    """Losing sight of anything closes the socket (the page says so rather than keep rows its
    user may no longer see); an access change that takes nothing away leaves it open."""
    user, domain = await database_sync_to_async(_world)(django_user_model)
    _client, cookie = await database_sync_to_async(_session)(user)
    bystander = await database_sync_to_async(django_user_model.objects.create_user)(
        "by", password="b-pass-1234"
    )
    socket = await _open([(b"cookie", cookie)])
    await database_sync_to_async(grant)(bystander, "Viewer")  # someone else's access
    await database_sync_to_async(grant)(user, "Viewer", domain)  # more for this user
    assert await socket.receive_nothing(timeout=1)
    await apublish(await database_sync_to_async(domain_event)(domain))
    assert (await socket.receive_json_from(timeout=5))["domain"]["name"] == "in-a"

    await database_sync_to_async(Grant.objects.filter(user=user, scope=Grant.Scope.TEAM).delete)()
    assert await _closed_with(socket) == (4403, "your access was changed")
