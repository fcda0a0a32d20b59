"""`make run`: the whole console on one machine, embedded default unless DATABASE_URL/REDIS_URL.

Starts (and on Ctrl-C stops, in reverse order) the embedded Redis, a local agent attached to this
machine's libvirt, the ASGI web server, one Celery worker and hostwatch; migrates the database,
creates the `admin` user and enrols the local agent as host `local`.

Environment: PORT (8000), DOMUS_LISTEN (127.0.0.1), DOMUS_AGENT_PORT (8901), DOMUS_LIBVIRT_URI
(qemu:///system), DOMUS_ACCEL (auto), DOMUS_ADMIN_PASSWORD, DOMUS_DATA_DIR (./var).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from console import embedded_redis

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
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
    print(f"domus: {message}", flush=True)


class Stack:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.redis: subprocess.Popen[bytes] | None = None

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # Own process group: Ctrl-C reaches only the launcher, which stops children in order.
        proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop in time; killing it")
                proc.kill()
        embedded_redis.stop(self.redis)

    def died(self) -> str | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return f"{name} exited with status {proc.returncode}"
        return None


def _agent_secret(data_dir: Path) -> Path:
    path = data_dir / "agent.secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
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


def _wait_healthy(url: str, stack: Stack, timeout: float = 90) -> None:
    """Until the console is healthy and hostwatch hears this machine's own agent (other hosts
    may well be offline: they are the fleet's business, not this start's)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if problem := stack.died():
            raise SystemExit(f"domus: {problem}; see its output above")
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


def main() -> int:
    data_dir = Path(os.environ.get("DOMUS_DATA_DIR", ROOT / "var")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DOMUS_DATA_DIR"] = str(data_dir)
    port = int(os.environ.get("PORT", "8000"))
    listen = os.environ.get("DOMUS_LISTEN", "127.0.0.1")
    agent_port = int(os.environ.get("DOMUS_AGENT_PORT", "8901"))
    uri = os.environ.get("DOMUS_LIBVIRT_URI", "qemu:///system")
    for what, address, number in (("web", listen, port), ("agent", "127.0.0.1", agent_port)):
        if problem := _port_taken(address, number):
            log(f"cannot start the {what} server: {problem}")
            return 1
    stack = Stack()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, which Python would inherit.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if not os.environ.get("REDIS_URL"):
            socket_path = data_dir / "redis.sock"
            stack.redis = embedded_redis.start(socket_path)
            os.environ["REDIS_URL"] = f"unix://{socket_path}"
            log(f"embedded Redis on {socket_path}")
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        from console.setup import admin_ensure, database_ensure, local_host_ensure

        log(f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")
        if created := database_ensure():
            log(f"created the PostgreSQL database {created}")
        call_command("migrate", interactive=False, verbosity=0)
        password = admin_ensure(password=os.environ.get("DOMUS_ADMIN_PASSWORD"))
        secret_file = _agent_secret(data_dir)
        agent_url = f"http://127.0.0.1:{agent_port}"
        local_host_ensure(url=agent_url, secret=secret_file.read_text().strip())

        accel = os.environ.get("DOMUS_ACCEL", "auto")
        agent_args = [
            *("--uri", uri, "--listen", "127.0.0.1", "--port", str(agent_port), "--accel", accel),
            *("--secret-file", str(secret_file), "--state-dir", str(data_dir / "agent")),
        ]
        stack.spawn("agent", [PY, "-m", "agent", *agent_args])
        web_args = " ".join(("--log-level warning --no-access-log", *WEB_SOCKET_ARGS))
        stack.spawn(
            "web",
            [
                PY,
                "-m",
                "uvicorn",
                "console.asgi:application",
                "--host",
                listen,
                "--port",
                str(port),
                *web_args.split(),
            ],
        )
        # Threads: a job mostly waits on an agent, and a long shutdown must not hold up the others.
        worker_args = "--quiet worker --pool threads --concurrency 4 --loglevel WARNING"
        stack.spawn(
            "worker", [PY, "-m", "celery", "-A", "console", *worker_args.split(), "-n", f"domus-{port}@%h"]
        )
        stack.spawn("hostwatch", [PY, "manage.py", "hostwatch"])
        url = f"http://{'127.0.0.1' if listen in ('0.0.0.0', '::') else listen}:{port}/"  # noqa: S104
        _wait_healthy(url, stack)
        log(f"console ready at {url}")
        if password:
            log(f"login: admin / {password}  (shown once; change it with `manage.py changepassword admin`)")
        else:
            log("login: admin (password from DOMUS_ADMIN_PASSWORD or printed at the first run)")
        log("Ctrl-C stops everything")
        while not (problem := stack.died()):
            time.sleep(0.5)
        log(f"{problem}; stopping")
        return 1
    except KeyboardInterrupt:
        log("stopping")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
