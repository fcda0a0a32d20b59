from __future__ import annotations

import asyncio
import gc
import json
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from rest_framework.test import APIClient

from domains.consoles import TicketRefused, console_ticket_redeem
from domains.models import ConsoleTicket, Domain
from hosts.models import Host
from tests.conftest import quiet_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(host: Host) -> Domain:
    return Domain.objects.create(name="d", host=host, state=Domain.State.RUNNING)


def issue(api: APIClient, domain: Domain) -> str:
    response = api.post(f"/api/v1/domains/{domain.pk}/console-tickets/", {"kind": "serial"}, format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["url"] == f"/ws/console/?ticket={data['ticket']}&domain={domain.pk}"
    return str(data["ticket"])


def test_ticket_is_single_use(api: APIClient, running: Domain, user: Any) -> None:
    key = issue(api, running)
    assert console_ticket_redeem(key=key, user=user, domain_id=str(running.pk)).domain == running
    with pytest.raises(TicketRefused, match="already used"):
        console_ticket_redeem(key=key, user=user, domain_id=str(running.pk))


def test_a_ticket_alone_opens_nothing(api: APIClient, running: Domain, user: Any) -> None:
    """A leaked ticket is useless without the user's session or API token."""
    key = issue(api, running)
    with pytest.raises(TicketRefused, match="sign in"):
        console_ticket_redeem(key=key, user=AnonymousUser(), domain_id=str(running.pk))
    with pytest.raises(TicketRefused, match="already used"):  # and the attempt spent it
        console_ticket_redeem(key=key, user=user, domain_id=str(running.pk))


def test_expired_ticket_is_refused(api: APIClient, running: Domain, user: Any) -> None:
    key = issue(api, running)
    ConsoleTicket.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(TicketRefused, match="expired"):
        console_ticket_redeem(key=key, user=user, domain_id=str(running.pk))


def test_ticket_lives_30_seconds(api: APIClient, running: Domain) -> None:
    issue(api, running)
    ticket = ConsoleTicket.objects.get()
    assert timedelta(seconds=29) < ticket.expires_at - ticket.created_at <= timedelta(seconds=31)


def test_ticket_of_another_user_is_refused(api: APIClient, running: Domain, django_user_model: Any) -> None:
    key = issue(api, running)
    other = django_user_model.objects.create_user("bob", password="x-pass-1234")
    with pytest.raises(TicketRefused, match="another user"):
        console_ticket_redeem(key=key, user=other, domain_id=str(running.pk))
    assert ConsoleTicket.objects.get().used_at is not None  # spent: Bob cannot retry, nor can Ana


def test_unknown_ticket_is_refused(running: Domain, user: Any) -> None:
    with pytest.raises(TicketRefused, match="unknown"):
        console_ticket_redeem(key="forged", user=user, domain_id=str(running.pk))


def test_ticket_is_stored_hashed(api: APIClient, running: Domain) -> None:
    key = issue(api, running)
    assert not ConsoleTicket.objects.filter(key_hash=key).exists()


def test_no_ticket_for_a_stopped_domain(api: APIClient, host: Host) -> None:
    domain = Domain.objects.create(name="off", host=host, state=Domain.State.SHUTOFF)
    response = api.post(f"/api/v1/domains/{domain.pk}/console-tickets/", {"kind": "serial"}, format="json")
    assert response.status_code == 409
    assert "start it first" in response.json()["detail"]


def test_unknown_console_kind_is_refused(api: APIClient, running: Domain) -> None:
    response = api.post(f"/api/v1/domains/{running.pk}/console-tickets/", {"kind": "telnet"}, format="json")
    assert response.status_code == 400
    assert "kind" in response.json()["fields"]


def _viewer(django_user_model: Any, domain: Domain) -> tuple[Any, APIClient]:
    """A user who may watch this domain's console but not type into it (the Viewer role)."""
    from console.access.services import api_token_issue
    from tests.conftest import grant

    viewer = django_user_model.objects.create_user("vic", password="v-pass-1234")
    grant(viewer, "Viewer", domain)
    _, key = api_token_issue(user=viewer)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return viewer, client


def test_a_viewer_gets_a_view_ticket_but_not_an_interact_one(running: Domain, django_user_model: Any) -> None:
    viewer, client = _viewer(django_user_model, running)
    url = f"/api/v1/domains/{running.pk}/console-tickets/"
    refused = client.post(url, {"kind": "serial", "mode": "interact"}, format="json")
    assert refused.status_code == 403 and "domain.console.interact" in refused.json()["detail"]
    granted = client.post(url, {"kind": "serial", "mode": "view"}, format="json")
    assert granted.status_code == 201 and granted.json()["mode"] == "view"
    ticket = console_ticket_redeem(key=granted.json()["ticket"], user=viewer, domain_id=str(running.pk))
    assert ticket.mode == ConsoleTicket.Mode.VIEW


def test_interact_is_the_default_and_unknown_modes_are_refused(api: APIClient, running: Domain) -> None:
    url = f"/api/v1/domains/{running.pk}/console-tickets/"
    assert api.post(url, {"kind": "serial"}, format="json").json()["mode"] == "interact"
    response = api.post(url, {"kind": "serial", "mode": "drive"}, format="json")
    assert response.status_code == 400 and "mode" in response.json()["fields"]


def test_a_view_ticket_is_refused_once_watching_is_withdrawn(running: Domain, django_user_model: Any) -> None:
    from console.access.models import Grant

    viewer, client = _viewer(django_user_model, running)
    key = client.post(
        f"/api/v1/domains/{running.pk}/console-tickets/", {"kind": "serial", "mode": "view"}, format="json"
    ).json()["ticket"]
    Grant.objects.filter(user=viewer).delete()
    with pytest.raises(TicketRefused, match="withdrawn"):
        console_ticket_redeem(key=key, user=viewer, domain_id=str(running.pk))


def test_a_vnc_ticket_is_bound_to_its_kind(api: APIClient, running: Domain, user: Any) -> None:
    response = api.post(f"/api/v1/domains/{running.pk}/console-tickets/", {"kind": "vnc"}, format="json")
    assert response.status_code == 201, response.content
    assert (
        console_ticket_redeem(key=response.json()["ticket"], user=user, domain_id=str(running.pk)).kind
        == ConsoleTicket.Kind.VNC
    )


def test_no_vnc_ticket_for_a_domain_created_without_a_display(api: APIClient, host: Host) -> None:
    domain = Domain.objects.create(
        name="headless", host=host, state=Domain.State.RUNNING, spec={"name": "headless", "graphics": False}
    )
    response = api.post(f"/api/v1/domains/{domain.pk}/console-tickets/", {"kind": "vnc"}, format="json")
    assert response.status_code == 409 and "no graphical console" in response.json()["detail"]
    assert not ConsoleTicket.objects.exists()


def test_a_ticket_opens_only_the_domain_the_socket_names(
    api: APIClient, running: Domain, user: Any, host: Host
) -> None:
    other = Domain.objects.create(name="other", host=host, state=Domain.State.RUNNING)
    key = issue(api, running)
    with pytest.raises(TicketRefused, match="another domain"):
        console_ticket_redeem(key=key, user=user, domain_id=str(other.pk))
    with pytest.raises(TicketRefused, match="already used"):  # and the attempt spent it
        console_ticket_redeem(key=key, user=user, domain_id=str(running.pk))


async def asgi_post(path: str, payload: dict[str, Any], token: str) -> int:
    """One HTTP request through console.asgi's application, as uvicorn hands it over."""
    from console.asgi import application

    body = json.dumps(payload).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Token {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    answered = asyncio.Event()
    status = 0
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await application(scope, receive, send)
    return status


def open_connections() -> set[int]:
    """The Django connections of any thread, live or not, whose database connection is open."""
    return {
        id(o)
        for o in gc.get_objects()
        if issubclass(type(o), BaseDatabaseWrapper) and o.connection is not None
    }


@pytest.mark.django_db(transaction=True)
async def test_ticket_requests_leave_no_database_connection_open(
    running: Domain, user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each console begins with an HTTP request for its ticket. Under ASGI, Django runs each
    request on a thread of its own that ends with it; a connection kept for reuse
    (CONN_MAX_AGE) was left open on that thread, for the garbage collector to close whenever
    it next ran a full collection: until then 2-3 file descriptors each (and on PostgreSQL a
    server connection), 125 descriptors in the soak bench's web process after a few waves."""
    from console.settings import _database

    # Kept-alive connections, as the console runs (tests/conftest.py turns them off).
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", _database()["CONN_MAX_AGE"])
    token = await sync_to_async(quiet_token)(user)
    gc.collect()
    gc.disable()  # a connection a request leaves open stays there to be counted
    try:
        before = open_connections()
        for _ in range(10):
            path = f"/api/v1/domains/{running.pk}/console-tickets/"
            assert await asgi_post(path, {"kind": "serial"}, token) == 201
        left = open_connections() - before
    finally:
        gc.enable()
    assert len(left) == 0
