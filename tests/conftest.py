from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest
from rest_framework.test import APIClient

from console.access.models import ApiToken, Grant, Role, hash_key
from console.access.permissions import BUILTIN_ROLES
from console.access.services import api_token_issue
from hosts.models import Host

# `make test` sets DOMUS_TEST_STRICT=1: there a test skipped for want of libvirt, the test guest,
# Chromium or virt-xml-validate fails the run, unless it is marked optional (it only applies to
# some set-ups, such as PostgreSQL-only tests on the embedded default).
STRICT = os.environ.get("DOMUS_TEST_STRICT") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if (
        STRICT
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("optional") is None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but DOMUS_TEST_STRICT=1 (make test) requires it: {reason}"


def grant(user: Any, role: str, scope: Any = None) -> Grant:
    """Give `user` the built-in `role` on `scope`: None (the site), a Team, a Host or a Domain."""
    target: dict[str, Any] = {}
    kind = Grant.Scope.SITE
    if scope is not None:
        kind = Grant.Scope(type(scope).__name__.lower())
        target = {kind.value: scope}
    return Grant.objects.create(user=user, role=builtin_role(role), scope=kind, **target)


def builtin_role(name: str) -> Role:
    # Transactional tests flush the tables, the migration's built-in roles with them.
    role, _ = Role.objects.get_or_create(
        name=name, defaults={"permissions": BUILTIN_ROLES[name], "builtin": True}
    )
    return role


def quiet_token(user: Any) -> str:
    """A key for a fresh token, made without the service, so the audit trail stays empty (for
    tests that count audit events)."""
    key = ApiToken.new_key()
    ApiToken.objects.create(user=user, name="test", prefix=key[:8], key_hash=hash_key(key))
    return key


def quiet_login(client: Any, user: Any) -> None:
    """force_login without the sign-in landing in the audit trail (for tests that count it)."""
    from django.contrib.auth.signals import user_logged_in

    from console.access import signals

    user_logged_in.disconnect(signals._logged_in)
    try:
        client.force_login(user)
    finally:
        user_logged_in.connect(signals._logged_in)


@pytest.fixture
def user(django_user_model: Any) -> Any:
    """A site Owner (every permission, everywhere, without being a superuser)."""
    user = django_user_model.objects.create_user("ana", password="s3cret-pass")
    grant(user, "Owner")
    return user


@pytest.fixture
def api(user: Any) -> APIClient:
    _, key = api_token_issue(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def host_facts(**overrides: Any) -> dict[str, Any]:
    """What an emulating (TCG) host with 4 CPUs and 8 GiB reports, as its agent would."""
    return {
        "hostname": "x",
        "uri": "qemu:///system",
        "hypervisor": "qemu",
        "accel": "tcg",
        "arch": "x86_64",
        "hvm_hardware_assisted": False,
        "kvm_usable": False,
        "cpus": 4,
        "memory_mib": 8192,
        "free_memory_mib": 4000,
        "libvirt_version": "9",
        "agent_version": "1",
        "default_pool_path": "/var/lib/libvirt/images",
        **overrides,
    }


@pytest.fixture
def host(db: None) -> Host:
    return Host.objects.create(
        name="h1",
        url="http://127.0.0.1:1",
        secret="x" * 32,
        state=Host.State.ONLINE,
        facts={"default_pool_path": "/var/lib/libvirt/images"},
    )


@pytest.fixture
def db_cleanups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each database clean-up Channels runs before dispatching a message, as it happens."""
    import channels.consumer

    cleanups: list[str] = []
    cleanup = channels.consumer.aclose_old_connections

    async def counted() -> None:
        cleanups.append("cleanup")
        await cleanup()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    return cleanups


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """No kept-alive connections in tests: channels' database_sync_to_async opens them from
    short-lived threads, where they would outlive the test database and block its removal."""
    from django.db import connections

    connections.settings["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture(autouse=True)
def _fresh_reach_cache() -> None:
    """Open event sockets cache what each user may see per process; user ids repeat across tests."""
    from console.realtime.consumers import reach_cache

    reach_cache.invalidate()


@pytest.fixture(autouse=True)
def _isolated_login_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed sign-ins are counted in Redis, which outlives a test run: give each test its own
    key namespace (still under DOMUS_REDIS_PREFIX), so that runs, tests and a console sharing the
    Redis do not lock each other out. The keys expire on their own."""
    import uuid

    from console.access.login import throttle

    namespace = f"{throttle._namespace()}-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(throttle, "_namespace", lambda: namespace)


@pytest.fixture
def driver_agent(tmp_path: Any) -> Any:
    """A real agent of its own (`python -m agent`) on libvirt's in-memory test driver, whose
    predefined domain "test" runs; stopped at the end."""
    from tests.agent.conftest import launch_agent, stop_agent

    pool = tmp_path / "pool"
    pool.mkdir()
    running = launch_agent(uri="test:///default", pool_dir=pool, log_path=tmp_path / "agent.log")
    yield running
    stop_agent(running)


def pytest_configure(config: pytest.Config) -> None:
    """Passwords hashed with one round of a fast hasher in the test process: what is tested is who
    may sign in and when, not PBKDF2's cost (600,000 rounds, ~0.3 s a hash here, paid by every
    user a test makes). Stacks the tests start (make run's, the drills', compose) hash as in
    production."""
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
