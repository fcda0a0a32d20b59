from __future__ import annotations

import os
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import authenticate

from console.setup import admin_ensure, database_ensure, local_host_ensure

pytestmark = pytest.mark.django_db


def test_admin_gets_a_generated_password_once() -> None:
    password = admin_ensure(password=None)
    assert password and len(password) >= 12
    assert authenticate(username="admin", password=password) is not None
    assert admin_ensure(password=None) is None  # not printed again, not changed
    assert authenticate(username="admin", password=password) is not None


def test_admin_password_from_the_environment_is_applied_every_time() -> None:
    assert admin_ensure(password="first-pass-123") is None
    assert admin_ensure(password="second-pass-456") is None
    assert authenticate(username="admin", password="second-pass-456") is not None


def test_local_host_is_registered_once_and_updated() -> None:
    first = local_host_ensure(url="http://127.0.0.1:8901", secret="a" * 32)
    second = local_host_ensure(url="http://127.0.0.1:8902", secret="b" * 32)
    assert first.pk == second.pk
    assert second.url == "http://127.0.0.1:8902"


@pytest.mark.optional
@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="only PostgreSQL databases are created by Domus (SQLite makes its file itself)",
)
def test_missing_postgres_database_is_created() -> None:
    import psycopg

    name = f"domus_setup_test_{os.getpid()}"
    db: dict[str, Any] = {**settings.DATABASES["default"], "NAME": name}
    try:
        assert database_ensure(db) == name
        assert database_ensure(db) is None
    finally:
        url = f"host={db['HOST']} port={db['PORT'] or 5432} user={db['USER']} dbname=postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
