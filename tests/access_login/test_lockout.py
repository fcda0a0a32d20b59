from __future__ import annotations

import re
import time
from typing import Any

from django.test import Client

from console.access.login import throttle
from console.audit.models import AuditEvent
from tests.access_login.conftest import sign_in, signed_in

LOCKED = "Too many failed sign-in attempts"


def fail(client: Client, times: int, username: str = "ana", **extra: Any) -> list[Any]:
    return [sign_in(client, username, "wrong", **extra) for _ in range(times)]


def test_four_failures_only_say_wrong_password(user: Any, client: Client) -> None:
    for response in fail(client, 4):
        assert response.status_code == 200
        assert b"Wrong username or password." in response.content and LOCKED.encode() not in response.content
    assert sign_in(client).status_code == 302 and signed_in(client)


def test_fifth_failure_locks_the_username_even_for_the_right_password(user: Any, client: Client) -> None:
    *_, fifth = fail(client, 5)
    assert fifth.status_code == 429 and LOCKED.encode() in fifth.content
    response = sign_in(client)
    assert response.status_code == 429 and not signed_in(client)
    text = response.content.decode()
    assert re.search(r"You may try again in 15 minutes \(after \d\d:\d\d UTC\)", text), text
    # The lockout is recorded once, however often it is hit.
    fail(client, 3)
    lockout = AuditEvent.objects.get(action="auth.lockout")
    assert lockout.object_repr == "ana" and lockout.outcome == "denied" and lockout.ip == "127.0.0.1"


def test_a_locked_username_is_not_even_checked(user: Any, client: Client) -> None:
    fail(client, 5)
    before = AuditEvent.objects.filter(action="auth.login_failed").count()
    assert sign_in(client, password="wrong").status_code == 429
    # Refused before authenticate(): no new failed-login row, no password hashing.
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == before


def test_the_lockout_follows_the_username_not_the_case(user: Any, client: Client) -> None:
    fail(client, 5, username="ANA")
    assert sign_in(client).status_code == 429


def test_a_success_clears_the_username_counter(user: Any, client: Client) -> None:
    fail(client, 4)
    assert sign_in(client).status_code == 302
    client.post("/logout/")
    for response in fail(client, 4):
        assert response.status_code == 200
    assert sign_in(client).status_code == 302 and signed_in(client)


def test_the_lockout_ends(user: Any, client: Client, settings: Any) -> None:
    settings.DOMUS_LOGIN_LOCKOUT_SECONDS = 1
    fail(client, 5)
    assert sign_in(client).status_code == 429
    time.sleep(1.2)
    assert sign_in(client).status_code == 302 and signed_in(client)


def test_the_lockout_lasts_its_setting(user: Any, client: Client) -> None:
    fail(client, 5)
    ttl = throttle._redis().ttl(throttle._username_keys("ana")[1])
    assert 890 <= ttl <= 900


def test_an_address_with_more_than_twenty_failures_is_refused(user: Any) -> None:
    robot = Client(REMOTE_ADDR="198.51.100.7")
    for i in range(20):  # twenty different names: no username lockout
        assert sign_in(robot, f"guess{i}", "wrong").status_code == 200
    # Twenty failures are allowed; the right password still works from there...
    assert sign_in(robot).status_code == 302
    robot.post("/logout/")
    # ...the twenty-first locks the address, for every username, even with the right password.
    assert sign_in(robot, "guess-last", "wrong").status_code == 429
    refused = sign_in(robot)
    assert refused.status_code == 429 and LOCKED.encode() in refused.content and not signed_in(robot)
    # Another address is not affected, and the username was never locked.
    assert sign_in(Client(REMOTE_ADDR="198.51.100.8")).status_code == 302
    lockout = AuditEvent.objects.get(action="auth.lockout")
    assert lockout.object_type == "address" and lockout.object_repr == "198.51.100.7"


def test_refusals_do_not_tell_whether_the_username_exists(user: Any) -> None:
    known, unknown = Client(REMOTE_ADDR="192.0.2.1"), Client(REMOTE_ADDR="192.0.2.2")
    for a, b in zip(fail(known, 6), fail(unknown, 6, username="nobody"), strict=True):
        assert a.status_code == b.status_code
        assert _errors(a) == _errors(b)
    assert _errors(a) and LOCKED in _errors(a)[0]


def _errors(response: Any) -> list[str]:
    """The form's errors, the end of a lockout ("after 04:10 UTC") left out: the two series of
    sign-ins run one after the other, a minute boundary may fall between them."""
    return [
        re.sub(r"\(after \d\d:\d\d UTC\)", "(after …)", str(e))
        for e in response.context["form"].non_field_errors()
    ]


def test_the_api_token_path_is_not_throttled(user: Any, api: Any, client: Client) -> None:
    fail(client, 5)
    assert sign_in(client).status_code == 429
    assert api.get("/api/v1/domains/").status_code == 200
