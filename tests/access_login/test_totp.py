from __future__ import annotations

from typing import Any

from django.test import Client
from rest_framework.test import APIClient

from console.access.login.models import AuthenticatorApp
from console.audit.models import AuditEvent
from tests.access_login.conftest import current_code, sign_in, signed_in, wrong_code


def test_enrol_shows_the_uri_and_qr_code_and_needs_one_code(user: Any, client: Client) -> None:
    client.force_login(user)
    page = client.get("/account/2fa/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "otpauth://totp/Domus%3Aana?secret=" in text and 'src="data:image/svg+xml;base64,' in text
    device = AuthenticatorApp.objects.get(user=user)
    assert not device.confirmed
    # Reloading keeps the same secret (the app may already have scanned it).
    client.get("/account/2fa/")
    assert AuthenticatorApp.objects.get(user=user).key == device.key

    refused = client.post("/account/2fa/", {"action": "enrol", "code": wrong_code(device)})
    assert refused.status_code == 400 and not AuthenticatorApp.objects.get(user=user).confirmed

    done = client.post("/account/2fa/", {"action": "enrol", "code": current_code(device)})
    assert done.status_code == 302
    assert AuthenticatorApp.objects.get(user=user).confirmed
    assert AuditEvent.objects.filter(action="auth.totp.enrol", actor=user).count() == 1
    # The session that enrolled has proved the code: it stays in.
    page = client.get("/account/2fa/")
    assert page.status_code == 200 and b"Two-factor sign-in is <strong>on</strong>" in page.content
    assert client.get("/").status_code == 200


def test_an_unconfirmed_device_does_not_count(user: Any, client: Client) -> None:
    AuthenticatorApp.objects.create(user=user, name="half", confirmed=False)
    assert sign_in(client)["Location"] == "/" and signed_in(client)


def test_sign_in_asks_for_the_code_after_the_password(
    user: Any, device: AuthenticatorApp, client: Client
) -> None:
    response = sign_in(client)
    assert response.status_code == 302 and response["Location"] == "/login/code/"
    assert not signed_in(client)  # the password alone signs nobody in
    assert client.get("/")["Location"].startswith("/login/")
    assert client.get("/login/code/").status_code == 200

    wrong = client.post("/login/code/", {"code": wrong_code(device)})
    assert wrong.status_code == 200 and b"That code is not right." in wrong.content
    assert not signed_in(client)
    failed = AuditEvent.objects.get(action="auth.login_failed")
    assert failed.object_repr == "ana" and "second-factor" in failed.detail

    right = client.post("/login/code/", {"code": current_code(device)})
    assert right.status_code == 302 and right["Location"] == "/"
    assert signed_in(client)
    assert client.get("/").status_code == 200
    assert AuditEvent.objects.filter(action="auth.login", actor=user).count() == 1


def test_the_code_step_keeps_next(user: Any, device: AuthenticatorApp, client: Client) -> None:
    client.post("/login/", {"username": "ana", "password": "s3cret-pass", "next": "/hosts/"})
    assert client.post("/login/code/", {"code": current_code(device)})["Location"] == "/hosts/"


def test_wrong_codes_count_toward_the_lockout(user: Any, device: AuthenticatorApp, client: Client) -> None:
    for _ in range(4):
        sign_in(client, password="wrong")
    sign_in(client)
    locked = client.post("/login/code/", {"code": wrong_code(device)})
    assert locked.status_code == 429 and b"Too many failed sign-in attempts" in locked.content
    assert AuditEvent.objects.filter(action="auth.lockout").count() == 1
    # The half-done sign-in is gone, and the right password with the right code is refused.
    assert client.get("/login/code/")["Location"] == "/login/"
    assert sign_in(client).status_code == 429 and not signed_in(client)


def test_a_pending_sign_in_expires(
    user: Any, device: AuthenticatorApp, client: Client, settings: Any
) -> None:
    settings.DOMUS_LOGIN_PENDING_SECONDS = -1
    sign_in(client)
    assert client.post("/login/code/", {"code": current_code(device)})["Location"] == "/login/"
    assert not signed_in(client)


def test_a_session_without_the_code_reaches_no_page(
    user: Any, device: AuthenticatorApp, client: Client
) -> None:
    """A session signed in some other way (SSO, or one older than the enrolment) must give the
    code before any page; the API treats it as anonymous."""
    client.force_login(user)
    for url in ("/", "/hosts/", "/account/2fa/", "/login/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/code/?next="), url
    assert client.get("/api/v1/domains/").status_code == 401  # as anonymous
    assert client.post("/login/code/", {"code": current_code(device), "next": "/hosts/"})["Location"] == (
        "/hosts/"
    )
    assert client.get("/").status_code == 200
    assert client.get("/api/v1/domains/").status_code == 200


def test_api_tokens_do_not_need_the_code(user: Any, device: AuthenticatorApp, api: APIClient) -> None:
    assert api.get("/api/v1/domains/").status_code == 200


def test_removing_the_device_needs_a_current_code(
    user: Any, device: AuthenticatorApp, client: Client
) -> None:
    sign_in(client)
    client.post("/login/code/", {"code": current_code(device)})
    refused = client.post("/account/2fa/", {"action": "remove", "code": wrong_code(device)})
    assert refused.status_code == 400 and AuthenticatorApp.objects.filter(user=user).exists()
    done = client.post("/account/2fa/", {"action": "remove", "code": current_code(device)})
    assert done.status_code == 302 and not AuthenticatorApp.objects.filter(user=user).exists()
    assert AuditEvent.objects.filter(action="auth.totp.remove").count() == 1
    client.post("/logout/")
    assert sign_in(client)["Location"] == "/"
