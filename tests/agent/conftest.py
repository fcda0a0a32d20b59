"""Fixtures: a real agent process (python -m agent) on a free port."""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningAgent:
    url: str
    secret: str
    pool_dir: Path
    proc: subprocess.Popen[str]
    log_path: Path
    banner: str
    state_dir: Path | None = None
    fingerprint: str = ""  # lowercase hex, when the agent serves TLS
    pairing_code: str = ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text()

    async def log_count_exceeds(self, needle: str, count: int, *, guard: float = 60.0) -> None:
        """Wait until the agent's log has more than `count` lines with `needle` (what it does in
        the background, e.g. after an event); `guard` only stops a hang."""
        async with asyncio.timeout(guard):
            while self.log().count(needle) <= count:
                await asyncio.sleep(0.05)


def agent_init(state_dir: Path, url: str) -> tuple[str, str]:
    """Run `domus-agent init`; returns (fingerprint as lowercase hex, pairing code)."""
    out = subprocess.run(
        [sys.executable, "-m", "agent", "init", "--state-dir", str(state_dir), "--url", url],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fields = dict(
        line.strip().split(":", 1) for line in out.splitlines() if line.startswith("  ") and ":" in line
    )
    fingerprint = fields["Fingerprint"].strip().removeprefix("SHA256:").replace(":", "").lower()
    code = fields["Pairing code"].split()[0]
    return fingerprint, code


def launch_agent(
    *,
    uri: str,
    pool_dir: Path,
    log_path: Path,
    accel: str = "auto",
    ready_timeout: float = 30.0,
    tls: bool = False,
    state_dir: Path | None = None,
    port: int | None = None,
    secret: str | None = None,
    env: dict[str, str] | None = None,
) -> RunningAgent:
    """Start `python -m agent` (with `env` added to its environment). With `tls`, it gets a
    certificate and a pairing code first and serves HTTPS; without, it serves loopback HTTP with
    a fixed secret."""
    port = port or free_port()
    state_dir = state_dir or log_path.parent / f"state-{port}"
    fingerprint = code = ""
    if tls:
        fingerprint, code = agent_init(state_dir, f"https://127.0.0.1:{port}")
    secret = secrets.token_urlsafe(24) if secret is None else secret
    env = dict(os.environ, **(env or {}), DOMUS_AGENT_SECRET=secret, PYTHONUNBUFFERED="1")
    log_file = log_path.open("a")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent", "--uri", uri, "--port", str(port)),
            *("--pool-path", str(pool_dir), "--accel", accel, "--state-dir", str(state_dir)),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    banner = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            banner = proc.stdout.readline()
            if banner.startswith("domus-agent listening on"):
                break
        if proc.poll() is not None:
            break
    else:
        proc.kill()
    if not banner.startswith("domus-agent listening on"):
        proc.kill()
        raise RuntimeError(f"agent did not start ({uri}):\n{log_path.read_text()}")
    return RunningAgent(
        url=f"{'https' if tls else 'http'}://127.0.0.1:{port}",
        secret=secret,
        pool_dir=pool_dir,
        proc=proc,
        log_path=log_path,
        banner=banner.strip(),
        state_dir=state_dir,
        fingerprint=fingerprint,
        pairing_code=code,
    )


def stop_agent(agent: RunningAgent) -> None:
    agent.proc.terminate()
    try:
        agent.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        agent.proc.kill()
        agent.proc.wait()


@pytest.fixture(scope="module")
def test_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """An agent on libvirt's in-memory test driver (its state is private to the process)."""
    base = tmp_path_factory.mktemp("agent")
    pool = base / "pool"
    pool.mkdir()
    (pool / "vmlinuz").write_bytes(b"not really a kernel")
    (pool / "initrd.img").write_bytes(b"not really an initrd")
    (pool / "install.iso").write_bytes(b"not really an iso")
    (base / "outside").write_bytes(b"secret")
    agent = launch_agent(uri="test:///default", pool_dir=pool, log_path=base / "agent.log")
    try:
        yield agent
    finally:
        stop_agent(agent)
