"""A console stack for benchmarks: uvicorn (ASGI) and hostwatch on free ports, with its own data
directory, embedded SQLite and embedded Redis unless DATABASE_URL / REDIS_URL are set (a fresh
PostgreSQL database beside DATABASE_URL's, dropped afterwards). No Celery worker, no local agent.

The benchmark process itself sets Django up against the same database and Redis, to migrate,
create the user and its sessions, register hosts and count rows.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from console.launcher import WEB_SOCKET_ARGS
from tests.postgres import drop_database, scratch_database

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StackError(RuntimeError):
    pass


class ConsoleStack:
    def __init__(
        self, data_dir: Path, *, log_level: str = "INFO", web_app: str = "console.asgi:application"
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.web_app = web_app  # another ASGI entry point, for experiments
        self.port = free_port()
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis: subprocess.Popen[bytes] | None = None
        self.postgres_url: str | None = None  # the fresh database, dropped by stop()
        self.env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> str:
        return "postgresql" if self.postgres_url else "sqlite"

    # -- set-up ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Redis, the database and Django in this process; migrations applied."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "DOMUS_DATA_DIR": str(self.data_dir),
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "DOMUS_LOG_LEVEL": self.log_level,
            "PYTHONUNBUFFERED": "1",
        }
        database = os.environ.get("DATABASE_URL", "")
        if database.startswith("postgres"):
            self.postgres_url = scratch_database(database, "domus_bench")
            env["DATABASE_URL"] = self.postgres_url
        else:
            os.environ.pop("DATABASE_URL", None)
        if not os.environ.get("REDIS_URL"):
            from console import embedded_redis

            socket_path = self.data_dir / "redis.sock"
            self.redis = embedded_redis.start(socket_path)
            env["REDIS_URL"] = f"unix://{socket_path}"
        self.env = env
        os.environ.update(env)

        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)

    def _spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.data_dir / f"{name}.log").open("wb")
        with log:
            proc = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the benchmark only, which stops us
            )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self._spawn_web()
        self._spawn("hostwatch", [sys.executable, "manage.py", "hostwatch"])
        self._wait_web()

    def restart_web(self) -> None:
        """A fresh web process (what one measurement left in its heap must not pad the next's)."""
        proc = self.procs["web"]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._spawn_web()
        self._wait_web()

    def _spawn_web(self) -> None:
        self._spawn(
            "web",
            [
                *(sys.executable, "-m", "uvicorn", self.web_app),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--log-level", "warning", "--no-access-log", *WEB_SOCKET_ARGS),
            ],
        )

    def _wait_web(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2):  # noqa: S310 - loopback
                    return
            except urllib.error.HTTPError:
                return  # 503 without a worker: the web server answers, which is all we need
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise StackError(f"the web server did not answer on {self.url}:\n{self.log('web')}")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    @property
    def redis_pid(self) -> int | None:
        return self.redis.pid if self.redis is not None else None

    # -- tear-down ---------------------------------------------------------------------------
    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self.redis is not None:
            from console import embedded_redis

            embedded_redis.stop(self.redis)
            self.redis = None
        if self.postgres_url:
            _close_django_connections()
            drop_database(self.postgres_url)
            self.postgres_url = None


def _close_django_connections() -> None:
    from django.db import connections

    connections.close_all()


# -- Django-side helpers (after prepare()) -------------------------------------------------------


def create_viewer(username: str = "bench-viewer") -> Any:
    """A user with the built-in Viewer role on the whole site: sees every host and domain, the
    common case of someone watching the fleet (not a superuser, so the access filter runs)."""
    from django.contrib.auth import get_user_model

    from console.access.models import Grant, Role

    user = get_user_model().objects.create_user(username, password=None)
    Grant.objects.create(user=user, role=Role.objects.get(name="Viewer"), scope=Grant.Scope.SITE)
    return user


def login_sessions(user: Any, count: int) -> list[str]:
    """`count` signed-in sessions of `user` (as many browser tabs), their `sessionid` values."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    keys = []
    for _ in range(count):
        session = import_module(settings.SESSION_ENGINE).SessionStore()  # rows keyed by a hash
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        assert session.session_key is not None
        keys.append(session.session_key)
    return keys


def register_hosts(hosts: Sequence[tuple[str, str, str]]) -> dict[str, int]:
    """Register (name, url, secret) hosts the way an admin would; returns name -> host id."""
    from hosts.services import host_register

    return {
        name: host_register(name=name, url=url, secret=secret, actor=None).pk for name, url, secret in hosts
    }


def fleet_counts() -> tuple[int, int, int]:
    """(hosts online, hosts, domain rows) as the database sees them now."""
    from domains.models import Domain
    from hosts.models import Host

    return (
        Host.objects.filter(state=Host.State.ONLINE).count(),
        Host.objects.count(),
        Domain.objects.count(),
    )
