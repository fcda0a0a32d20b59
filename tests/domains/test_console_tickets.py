from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from rest_framework.test import APIClient

from domains.consoles import TicketRefused, console_ticket_redeem
from domains.models import ConsoleTicket, Domain
from hosts.models import Host

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
