"""An open console closes when its user may no longer use it: a grant withdrawn, a sign-out, a
revoked token. Through the real ASGI stack and channel layer; the agent's side is a stand-in
(a console byte pipe), since what is tested is the console process's decision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone

from console.access.models import Grant
from console.access.services import api_token_issue, api_token_revoke
from console.asgi import application
from domains import consumers
from domains.consoles import console_ticket_issue
from domains.models import Domain
from hosts.models import Host
from tests.asgi_socket import GoingSocket
from tests.conftest import grant

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1")


class FakeAgentConsole:
    """The agent's console socket, as the consumer uses it."""

    opened: list[dict[str, Any]] = []  # each console opened: kind, user, mode

    def __init__(self) -> None:
        self.closed = False
        self.close_code: int | None = None
        self.sent: list[bytes | str] = []  # what the consumer passed on to the agent
        self._messages: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()

    def __aiter__(self) -> FakeAgentConsole:
        return self

    async def __anext__(self) -> aiohttp.WSMessage:
        message = await self._messages.get()
        if message.type == aiohttp.WSMsgType.CLOSED:
            raise StopAsyncIteration
        return message

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def send_str(self, data: str) -> None:
        self.sent.append(data)

    def exception(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True
        await self._messages.put(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))


class FakeAgentClient:
    closed = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def __aenter__(self) -> FakeAgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    @asynccontextmanager
    async def open_console(self, domain_uuid: Any, **how: str) -> AsyncIterator[FakeAgentConsole]:
        console = FakeAgentConsole()
        FakeAgentConsole.opened.append({**how, "console": console})
        try:
            yield console
        finally:
            await console.close()


@pytest.fixture(autouse=True)
def fake_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "AgentClient", FakeAgentClient)


def _world(django_user_model: Any) -> tuple[Any, Domain]:
    host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret="x" * 32, state=Host.State.ONLINE)
    domain = Domain.objects.create(name="d", host=host, state=Domain.State.RUNNING)
    user = django_user_model.objects.create_user("watcher", password="w-pass-1234")
    grant(user, "Operator", domain)
    return user, domain


async def _open(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=[*headers, ORIGIN])
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    await asyncio.sleep(0.3)  # the pub/sub layer subscribes the group in the background
    return communicator


async def _closed_with(communicator: WebsocketCommunicator) -> tuple[int, str]:
    message = await communicator.receive_output(timeout=10)
    assert message["type"] == "websocket.close", message
    return message["code"], message.get("reason", "")


def _cookie(user: Any) -> tuple[Client, bytes]:
    client = Client()
    client.force_login(user)
    return client, f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.mark.parametrize("kind", ["serial", "vnc"])
async def test_withdrawing_the_grant_closes_the_open_console(django_user_model: Any, kind: str) -> None:
    user, domain = await database_sync_to_async(_world)(django_user_model)
    _client, cookie = await database_sync_to_async(_cookie)(user)
    _ticket, key = await database_sync_to_async(console_ticket_issue)(user=user, domain=domain, kind=kind)
    communicator = await _open(f"/ws/console/?ticket={key}&domain={domain.pk}", [(b"cookie", cookie)])
    # An unrelated access change leaves it open.
    await database_sync_to_async(Grant.objects.create)(user=user, role=(await _role("Viewer")), scope="site")
    assert await communicator.receive_nothing(timeout=1)
    await database_sync_to_async(Grant.objects.filter(user=user).delete)()
    code, reason = await _closed_with(communicator)
    assert code == 4403 and "withdrawn" in reason


async def _role(name: str) -> Any:
    from tests.conftest import builtin_role

    return await database_sync_to_async(builtin_role)(name)


async def test_signing_out_closes_the_consoles_of_that_session(django_user_model: Any) -> None:
    user, domain = await database_sync_to_async(_world)(django_user_model)
    client, cookie = await database_sync_to_async(_cookie)(user)
    _other_client, other_cookie = await database_sync_to_async(_cookie)(user)  # another browser
    keys = [
        (await database_sync_to_async(console_ticket_issue)(user=user, domain=domain, kind="serial"))[1]
        for _ in range(2)
    ]
    mine = await _open(f"/ws/console/?ticket={keys[0]}&domain={domain.pk}", [(b"cookie", cookie)])
    elsewhere = await _open(f"/ws/console/?ticket={keys[1]}&domain={domain.pk}", [(b"cookie", other_cookie)])
    await database_sync_to_async(client.post)("/logout/")
    code, reason = await _closed_with(mine)
    assert code == 4403 and reason == "signed out"
    assert await elsewhere.receive_nothing(timeout=1)  # that browser is still signed in
    await elsewhere.disconnect()


async def test_revoking_the_token_closes_its_console(django_user_model: Any) -> None:
    user, domain = await database_sync_to_async(_world)(django_user_model)
    token, secret = await database_sync_to_async(lambda: api_token_issue(user=user))()
    _ticket, key = await database_sync_to_async(console_ticket_issue)(user=user, domain=domain, kind="serial")
    communicator = await _open(
        f"/ws/console/?ticket={key}&domain={domain.pk}", [(b"authorization", f"Token {secret}".encode())]
    )
    await database_sync_to_async(api_token_revoke)(token=token, actor=user)
    code, reason = await _closed_with(communicator)
    assert code == 4403 and "revoked" in reason


async def test_a_console_opened_with_a_token_closes_when_the_token_expires(django_user_model: Any) -> None:
    """An expiry makes no event: the console wakes at its token's expiry, and lets go of the
    agent's console too."""
    user, domain = await database_sync_to_async(_world)(django_user_model)
    expires = timezone.now() + timedelta(seconds=1.5)
    _token, secret = await database_sync_to_async(lambda: api_token_issue(user=user, expires_at=expires))()
    _ticket, key = await database_sync_to_async(console_ticket_issue)(user=user, domain=domain, kind="serial")
    FakeAgentConsole.opened.clear()
    communicator = await _open(
        f"/ws/console/?ticket={key}&domain={domain.pk}", [(b"authorization", f"Token {secret}".encode())]
    )
    assert await _closed_with(communicator) == (4403, "the API token expired")
    assert timezone.now() >= expires
    assert FakeAgentConsole.opened[0]["console"].closed


@pytest.mark.parametrize(("kind", "passed_on"), [("serial", []), ("vnc", [b"\x03\x00"])])
async def test_a_watcher_s_input_stops_at_the_console_or_at_the_agent(
    django_user_model: Any, kind: str, passed_on: list[bytes]
) -> None:
    """A serial watcher's keystrokes stop here. A VNC watcher's bytes go on (they carry its
    requests for screen updates), with the agent told to drop its input: mode `view`."""
    user, domain = await database_sync_to_async(_world)(django_user_model)
    _client, cookie = await database_sync_to_async(_cookie)(user)
    _ticket, key = await database_sync_to_async(console_ticket_issue)(
        user=user, domain=domain, kind=kind, mode="view"
    )
    FakeAgentConsole.opened.clear()
    communicator = await _open(f"/ws/console/?ticket={key}&domain={domain.pk}", [(b"cookie", cookie)])
    await communicator.send_to(bytes_data=b"\x03\x00")
    await communicator.send_to(text_data='{"type": "take-control"}')  # a watcher may not
    await communicator.send_to(text_data='{"type": "break"}')
    await asyncio.sleep(0.2)
    (opened,) = FakeAgentConsole.opened
    assert (opened["kind"], opened["mode"], opened["user"]) == (kind, "view", "watcher")
    assert opened["console"].sent == passed_on
    await communicator.disconnect()


async def test_a_typist_s_requests_reach_the_agent_and_nothing_else(django_user_model: Any) -> None:
    user, domain = await database_sync_to_async(_world)(django_user_model)
    _client, cookie = await database_sync_to_async(_cookie)(user)
    _ticket, key = await database_sync_to_async(console_ticket_issue)(user=user, domain=domain, kind="serial")
    FakeAgentConsole.opened.clear()
    communicator = await _open(f"/ws/console/?ticket={key}&domain={domain.pk}", [(b"cookie", cookie)])
    for request in (
        '{"type":"break", "extra": 1}',
        '{"type": "reboot"}',
        "not json",
        '{"type": "take-control"}',
    ):
        await communicator.send_to(text_data=request)
    await asyncio.sleep(0.2)
    (opened,) = FakeAgentConsole.opened
    assert opened["console"].sent == ['{"type": "break"}', '{"type": "take-control"}']
    await communicator.disconnect()


async def test_typing_costs_no_database_cleanup_per_keystroke(
    django_user_model: Any, db_cleanups: list[str]
) -> None:
    """Channels cleans up database connections (in a worker thread) before each message it
    dispatches; keystrokes touch no database and skip it, while the other messages keep it."""
    user, domain = await database_sync_to_async(_world)(django_user_model)
    _client, cookie = await database_sync_to_async(_cookie)(user)
    _ticket, key = await database_sync_to_async(console_ticket_issue)(user=user, domain=domain, kind="serial")
    FakeAgentConsole.opened.clear()
    communicator = await _open(f"/ws/console/?ticket={key}&domain={domain.pk}", [(b"cookie", cookie)])
    assert db_cleanups  # the connect
    db_cleanups.clear()
    for key_pressed in b"uptime\r":
        await communicator.send_to(bytes_data=bytes([key_pressed]))
    await communicator.send_to(text_data='{"type": "break"}')
    await asyncio.sleep(0.2)
    (opened,) = FakeAgentConsole.opened
    assert opened["console"].sent == [bytes([k]) for k in b"uptime\r"] + ['{"type": "break"}']
    assert db_cleanups == []
    await communicator.disconnect()
    assert db_cleanups == ["cleanup"]  # the disconnect still has it


async def test_consoles_closing_as_an_access_change_reaches_them_leave_nothing_in_the_channel_layer(
    django_user_model: Any,
) -> None:
    """An open console listens for access changes on its own channel of the pub/sub layer (a
    queue in this process and a Redis subscription). One that closed just as such an event
    reached it left both behind for ever (see tests/console/test_events_socket.py)."""
    from channels.layers import get_channel_layer

    user, domain = await database_sync_to_async(_world)(django_user_model)
    _client, cookie = await database_sync_to_async(_cookie)(user)
    layer = get_channel_layer()
    assert layer is not None
    before = set(layer.channels)
    consoles = []
    for _ in range(5):
        _ticket, key = await database_sync_to_async(console_ticket_issue)(
            user=user, domain=domain, kind="serial"
        )
        consoles.append(await _open(f"/ws/console/?ticket={key}&domain={domain.pk}", [(b"cookie", cookie)]))
    channels = set(layer.channels) - before
    assert len(channels) == len(consoles)
    event = layer.serialize({"type": "domus.event", "event": {"type": "access.changed"}})
    for channel in channels:  # the event has reached each console ...
        layer.channels[channel].put_nowait(event)
    await asyncio.gather(*(c.disconnect() for c in consoles))  # ... as each closes
    assert channels & set(layer.channels) == set()


async def test_a_console_whose_browser_has_gone_still_lets_go_of_the_agent(django_user_model: Any) -> None:
    """Closing a console whose browser has just gone raises (uvicorn's ClientDisconnected,
    which it then swallows). An access change cutting such a console ended its consumer there,
    before it let go of the agent's console socket (kept open for ever: the agent answers the
    pings) and before its disconnect() left the access group."""
    from channels.layers import get_channel_layer

    from console.realtime.events import ACCESS_GROUP

    user, domain = await database_sync_to_async(_world)(django_user_model)
    _client, cookie = await database_sync_to_async(_cookie)(user)
    _ticket, key = await database_sync_to_async(console_ticket_issue)(user=user, domain=domain, kind="serial")
    layer = get_channel_layer()
    assert layer is not None
    before = set(layer.channels)
    FakeAgentConsole.opened.clear()
    socket = GoingSocket("/ws/console/", f"ticket={key}&domain={domain.pk}", [(b"cookie", cookie), ORIGIN])
    await socket.connect()
    await asyncio.sleep(0.3)  # the pub/sub layer subscribes the group in the background
    (channel,) = set(layer.channels) - before
    (opened,) = FakeAgentConsole.opened

    socket.gone = True  # the browser has gone; its grant is withdrawn before the close reaches the console
    await database_sync_to_async(Grant.objects.filter(user=user).delete)()
    await asyncio.sleep(1)
    await socket.close()
    assert opened["console"].closed
    assert channel not in layer.groups.get(f"{layer.prefix}__group__{ACCESS_GROUP}", set())
