"""`python -m console.roles ROLE`: run one part of the console, as a production process (the
console image's entry point, docker/console/; a systemd unit would call the same).

Roles: web (uvicorn, the ASGI app, on DOMUS_WEB_PORT), worker (Celery: jobs), hostwatch (with
DOMUS_HOSTWATCH_SHARD "i/n"), scheduler (periodic upkeep), migrate (the database schema and the
first admin, then exit: run once per deployment before the others start), and `manage ...`
(any management command). Each role replaces this process (exec), so that signals reach it
directly.

Settings come from the environment (console/settings.py): DATABASE_URL, REDIS_URL,
DOMUS_SECRET_KEY, DOMUS_ENCRYPTION_KEYS (the same for every role), DOMUS_ALLOWED_HOSTS,
DOMUS_CSRF_TRUSTED_ORIGINS, DOMUS_HTTPS=1 behind the TLS proxy; DOMUS_ADMIN_PASSWORD for
migrate's first admin.
"""

from __future__ import annotations

import os
import sys

from console.launcher import WEB_SOCKET_ARGS

ROLES = ("web", "worker", "hostwatch", "scheduler", "migrate", "manage")


def command(role: str, args: list[str], env: dict[str, str]) -> list[str]:
    """The command line that runs `role` (with extra `args` appended)."""
    py = sys.executable
    if role == "web":
        return [
            *(py, "-m", "uvicorn", "console.asgi:application"),
            *(
                "--host",
                env.get("DOMUS_WEB_LISTEN", "127.0.0.1"),
                "--port",
                env.get("DOMUS_WEB_PORT", "8000"),
            ),
            *(
                "--no-access-log",
                "--proxy-headers",
                "--forwarded-allow-ips",
                env.get("DOMUS_PROXY_IPS", "127.0.0.1"),
            ),
            *WEB_SOCKET_ARGS,
            *args,
        ]
    if role == "worker":
        name = env.get("DOMUS_WORKER_NAME", "worker")
        concurrency = env.get("DOMUS_WORKER_CONCURRENCY", "8")
        return [
            *(py, "-m", "celery", "-A", "console", "worker", "--pool", "threads"),
            *("--concurrency", concurrency, "--loglevel", "INFO", "-n", f"{name}@%h", *args),
        ]
    if role == "hostwatch":
        return [py, "-m", "django", "hostwatch", "--shard", env.get("DOMUS_HOSTWATCH_SHARD", "0/1"), *args]
    if role == "scheduler":
        return [py, "-m", "django", "scheduler", *args]
    if role == "manage":
        return [py, "-m", "django", *args]
    raise SystemExit(f"unknown role {role!r}: one of {', '.join(ROLES)}")


def migrate() -> None:
    """The schema, and an `admin` superuser when there is none yet: with DOMUS_ADMIN_PASSWORD, or
    a generated password printed once (in this role's log). An existing admin is left alone."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from console.setup import admin_ensure, database_ensure

    if created := database_ensure():
        print(f"domus: created the PostgreSQL database {created}", flush=True)
    call_command("migrate", interactive=False, verbosity=1)
    if get_user_model().objects.filter(username="admin").exists():
        print("domus: schema up to date; the admin user exists", flush=True)
        return
    generated = admin_ensure(password=os.environ.get("DOMUS_ADMIN_PASSWORD") or None)
    shown = f"password {generated} (shown once)" if generated else "the password in DOMUS_ADMIN_PASSWORD"
    print(f"domus: created the admin user: admin, {shown}", flush=True)


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(f"usage: python -m console.roles {{{','.join(ROLES)}}} [ARGS...]")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    if argv[0] == "migrate":
        migrate()
        return
    argv_out = command(argv[0], argv[1:], dict(os.environ))
    os.execv(argv_out[0], argv_out)  # noqa: S606 - our own fixed command line, no shell wanted


if __name__ == "__main__":
    main(sys.argv[1:])
