"""First-run set-up of a single-machine console: the admin user and the local host."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from hosts.models import Host
from hosts.services import host_register


def database_ensure(db: dict[str, Any] | None = None) -> str | None:
    """Create the PostgreSQL database named in DATABASE_URL when it does not exist yet, as a
    first `make run` against a fresh server needs. Returns its name when it was created."""
    db = db or settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        return None
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    given = {
        "host": db.get("HOST"),
        "port": db.get("PORT"),
        "user": db.get("USER"),
        "password": db.get("PASSWORD"),
    }
    conninfo = make_conninfo("", dbname="postgres", **{k: str(v) for k, v in given.items() if v})
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone():
            return None
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
    return str(db["NAME"])


@transaction.atomic
def admin_ensure(*, password: str | None) -> str | None:
    """Create `admin` if missing; set its password when given. Returns a generated password
    (only when it had to make one up), which the caller prints once."""
    users = get_user_model()
    user = users.objects.filter(username="admin").first()
    generated = None
    if user is None:
        generated = None if password else secrets.token_urlsafe(12)
        user = users.objects.create_superuser("admin", "", password or generated)
    elif password:
        user.set_password(password)
        user.save(update_fields=["password"])
    return generated


def local_host_ensure(*, url: str, secret: str) -> Host:
    return host_register(name="local", url=url, secret=secret)
