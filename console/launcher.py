"""`make run`: the whole console on one machine, embedded default unless DATABASE_URL/REDIS_URL.

Starts the embedded Redis, a local agent attached to this machine's libvirt, the ASGI web server,
one Celery worker, hostwatch and the scheduler (periodic upkeep); migrates the database, creates
the `admin` user and enrols the local agent as host `local`. It supervises them
(console/supervisor.py): a part that dies is restarted, and Ctrl-C, SIGTERM or SIGHUP stops
them in order (web and worker first, the agent last); a killed launcher takes them with it.

The data directory is private (console/private_dir.py): checked before anything starts, and
what the console's processes create in it is 0600 (umask 077).

Environment: PORT (8000), DOMUS_LISTEN (127.0.0.1), DOMUS_AGENT_PORT (8901), DOMUS_LIBVIRT_URI
(qemu:///system), DOMUS_ACCEL (auto), DOMUS_ADMIN_PASSWORD, DOMUS_DATA_DIR (./var),
DOMUS_STOP_TIMEOUT_SECONDS (60: how long a running job may take to finish when Domus stops).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from console import embedded_redis
from console.private_dir import PRIVATE_UMASK, DataDirUnsafe, private_dir_ensure, private_file_create
from console.supervisor import AlreadyRunning, Part, Supervisor

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MALLOC_ARENA_MAX = "2"  # see main(); the production image sets the same
# How uvicorn serves WebSockets, here and in production (README). Console frames are VNC
# updates (already compressed) and terminal bytes: permessage-deflate, which every browser
# offers, cost ~300 KiB of zlib state per socket and cut a console's throughput from ~730 to
# ~30 MB/s (bench/console_bench.py --deflate). uvicorn's sans-I/O websockets implementation
# spends ~15% less CPU per byte than the legacy one, and console.websocket_server extends it
# so that a console's bytes skip ASGI on their way to the browser (~20% less CPU per byte
# again). A browser sends at most 1 MiB in one message.
WEB_SOCKET_ARGS = (
    *("--ws", "console.websocket_server:ConsoleWebSocketProtocol"),
    *("--ws-per-message-deflate", "false"),
    *("--ws-max-size", "1048576"),
)


def log(message: str) -> None:
    # After a hang-up (the terminal closed: SIGHUP) stdout may be gone; stopping must go on.
    with contextlib.suppress(OSError):
        print(f"domus: {message}", flush=True)


def _agent_secret(data_dir: Path) -> Path:
    path = data_dir / "agent.secret"
    if not path.exists():
        private_file_create(path, secrets.token_urlsafe(32))
    return path


def _port_taken(address: str, port: int) -> str | None:
    """Why `address:port` cannot be listened on (another `make run`?), or None when it can."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as exc:
        return (
            f"{address}:{port} is taken ({exc.strerror}): is Domus already running? (PORT, DOMUS_AGENT_PORT)"
        )
    return None


def _local_agent_online() -> bool:
    from hosts.models import Host

    return Host.objects.filter(name="local", state=Host.State.ONLINE).exists()


def _wait_healthy(url: str, supervisor: Supervisor, timeout: float = 90) -> None:
    """Until the console is healthy and hostwatch hears this machine's own agent (other hosts
    may well be offline: they are the fleet's business, not this start's). A part that dies
    meanwhile is restarted as at any other time; one given up on ends the start."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        supervisor.poll()
        if given_up := supervisor.given_up():
            part = given_up[0]
            raise SystemExit(f"domus: {part.name} keeps failing ({part.last_exit}); see its output above")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=3) as resp:  # noqa: S310 - our own URL
                if resp.status == 200 and _local_agent_online():
                    return
                last = "the local agent is not online yet"
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")[:300]
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"domus: the console did not become healthy in {timeout:.0f} s: {last}")


class Stopping:
    """Signal handler: the first signal ends the run (KeyboardInterrupt), a second one hurries
    the stop (what has not stopped yet is killed)."""

    def __init__(self) -> None:
        self.requested = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested += 1
        if self.requested == 1:
            raise KeyboardInterrupt
        log("stopping now")

    def urgent(self) -> bool:
        return self.requested > 1


def main() -> int:
    # What the console's processes create (the database and its WAL, keys, the Redis socket) is
    # private, whatever umask `make run` was given.
    inherited_umask = os.umask(PRIVATE_UMASK)
    os.umask(inherited_umask | PRIVATE_UMASK)
    data_dir = Path(os.environ.get("DOMUS_DATA_DIR", ROOT / "var")).resolve()
    try:
        private_dir_ensure(data_dir, log=log)  # modes fixed and said; another owner refused
    except DataDirUnsafe as exc:
        log(f"cannot start: {exc}")
        return 1
    os.environ["DOMUS_DATA_DIR"] = str(data_dir)
    # glibc gives each thread that allocates its own heap arena (up to 8 per core); the web
    # process runs Django's views on a changing pool of threads, and its arenas kept growing
    # with free holes (bench/soak_bench.py --probe: bytes in use flat, free space and RSS
    # climbing). Two arenas: the same soak plateaus. Inherited by everything started here.
    os.environ.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
    port = int(os.environ.get("PORT", "8000"))
    listen = os.environ.get("DOMUS_LISTEN", "127.0.0.1")
    agent_port = int(os.environ.get("DOMUS_AGENT_PORT", "8901"))
    uri = os.environ.get("DOMUS_LIBVIRT_URI", "qemu:///system")
    stop = float(os.environ.get("DOMUS_STOP_TIMEOUT_SECONDS", "60"))
    supervisor = Supervisor(data_dir, cwd=ROOT, log=log)
    try:
        supervisor.acquire()  # and stops what a killed launcher left running
    except AlreadyRunning as exc:
        log(f"cannot start: {exc}")
        return 1
    stopping = Stopping()
    try:
        for what, address, number in (("web", listen, port), ("agent", "127.0.0.1", agent_port)):
            if problem := _port_taken(address, number):
                log(f"cannot start the {what} server: {problem}")
                return 1
        # SIGINT too: a shell starts background jobs with SIGINT ignored, which Python would
        # inherit. SIGHUP: the terminal or ssh session that ran `make run` closed.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, stopping)
        if not os.environ.get("REDIS_URL"):
            socket_path = data_dir / "redis.sock"
            socket_path.unlink(missing_ok=True)
            redis = supervisor.add(Part("redis", embedded_redis.server_argv(socket_path), stage=3))
            supervisor.start(redis)
            assert redis.proc is not None
            embedded_redis.wait_ready(socket_path, redis.proc)
            os.environ["REDIS_URL"] = f"unix://{socket_path}"
            log(f"embedded Redis on {socket_path}")
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connections

        from console.setup import admin_ensure, database_ensure, local_host_ensure

        log(f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")
        if created := database_ensure():
            log(f"created the PostgreSQL database {created}")
        call_command("migrate", interactive=False, verbosity=0)
        password = admin_ensure(password=os.environ.get("DOMUS_ADMIN_PASSWORD"))
        secret_file = _agent_secret(data_dir)
        agent_url = f"http://127.0.0.1:{agent_port}"
        local_host_ensure(url=agent_url, secret=secret_file.read_text().strip())
        connections.close_all()

        accel = os.environ.get("DOMUS_ACCEL", "auto")
        agent_args = [
            *("--uri", uri, "--listen", "127.0.0.1", "--port", str(agent_port), "--accel", accel),
            *("--secret-file", str(secret_file), "--state-dir", str(data_dir / "agent")),
        ]
        web_args = [
            *("console.asgi:application", "--host", listen, "--port", str(port)),
            *("--log-level", "warning", "--no-access-log", *WEB_SOCKET_ARGS),
        ]
        # Threads: a job mostly waits on an agent, and a long shutdown must not hold up the others.
        worker_args = [
            *("--quiet", "worker", "--pool", "threads", "--concurrency", "4"),
            *("--loglevel", "WARNING", "-n", f"domus-{port}@%h"),
        ]
        # Stop order (stages): the web and the worker first (its warm shutdown lets a running job
        # finish, against a live agent), then hostwatch, then the agent, and Redis last.
        for part in (
            # The agent writes files the hypervisor's user must read (the KVM probe's image,
            # cloud-init seeds, installer kernels): it keeps the umask it was given, and makes
            # its own state private itself.
            Part("agent", [PY, "-m", "agent", *agent_args], stage=2, umask=inherited_umask),
            Part("web", [PY, "-m", "uvicorn", *web_args], stage=0),
            Part("worker", [PY, "-m", "celery", "-A", "console", *worker_args], stage=0, stop_timeout=stop),
            Part("hostwatch", [PY, "manage.py", "hostwatch"], stage=1),
            Part("scheduler", [PY, "manage.py", "scheduler"], stage=1),
        ):
            supervisor.start(supervisor.add(part))
        url = f"http://{'127.0.0.1' if listen in ('0.0.0.0', '::') else listen}:{port}/"  # noqa: S104
        _wait_healthy(url, supervisor)
        log(f"console ready at {url}")
        if password:
            log(f"login: admin / {password}  (shown once; change it with `manage.py changepassword admin`)")
        else:
            log("login: admin (password from DOMUS_ADMIN_PASSWORD or printed at the first run)")
        log("Ctrl-C stops everything")
        while True:
            supervisor.poll()
            time.sleep(0.2)
    except KeyboardInterrupt:
        log("stopping")
        return 0
    finally:
        supervisor.stop(urgent=stopping.urgent)
        if stopping.requested:
            log("stopped")


if __name__ == "__main__":
    sys.exit(main())
