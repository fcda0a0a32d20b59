"""docker/compose.yaml brought up for a test: its own project name, ports and volumes, built with
the classic builder (no registry look-ups), and brought down with its volumes on the way out.

`docker compose` (v2) is used when the Docker CLI has it, else Debian's `docker-compose` (1.29):
the compose file is written for both. This machine's extra certificate authorities (a
TLS-intercepting proxy's, if any) are copied into docker/ca-certificates/ for the build, as the
README tells operators behind such a proxy to do, and removed afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.deploy.containers import REPO, ContainerError, docker, ensure_base_image, ensure_docker
from tests.e2e.conftest import _free_port

COMPOSE_FILE = REPO / "docker" / "compose.yaml"
CA_DIR = REPO / "docker" / "ca-certificates"
SYSTEM_EXTRA_CAS = Path("/usr/local/share/ca-certificates")
BUILD_TIMEOUT = 1800.0


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ContainerError("neither `docker compose` nor `docker-compose` is installed (scripts/bootstrap.sh)")


@dataclass
class ComposeStack:
    project: str
    env_file: Path
    settings: dict[str, str]
    workdir: Path
    command: list[str] = field(default_factory=compose_command)

    @property
    def public_url(self) -> str:
        return self.settings["DOMUS_PUBLIC_URL"]

    def web_url(self, replica: int) -> str:
        return f"http://127.0.0.1:{self.settings[f'DOMUS_WEB{replica}_PORT']}"

    def run(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}
        argv = [
            *self.command,
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(self.env_file),
            "-p",
            self.project,
            *args,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        if check and result.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv[-len(args) :])} failed: {result.stderr[-3000:] or result.stdout[-3000:]}"
            )
        return result

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def inspect(self, service: str, template: str) -> str:
        return docker("inspect", "-f", template, self.container(service)).stdout.strip()

    def restarts(self, service: str) -> int:
        return int(self.inspect(service, "{{.RestartCount}}") or 0)

    def running(self, service: str) -> bool:
        return self.inspect(service, "{{.State.Running}}") == "true"

    def kill(self, service: str) -> None:
        """SIGKILL the service's main process from outside, as a crash or the OOM killer would
        (`docker kill` counts as stopping it by hand: its restart policy would not apply)."""
        os.kill(int(self.inspect(service, "{{.State.Pid}}")), signal.SIGKILL)

    def manage(self, service: str, *args: str) -> str:
        return self.run("exec", "-T", service, "python", "-m", "console.roles", "manage", *args).stdout

    def logs(self, *services: str, tail: int = 60) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), *services, check=False).stdout

    def tls_certificate(self) -> Path:
        """The proxy's certificate (self-signed for DOMUS_PUBLIC_HOST when none was given), to
        verify TLS against; the proxy makes it when it first starts."""
        path = self.workdir / "proxy-cert.pem"
        if not path.exists():
            pem = self.run("exec", "-T", "proxy", "cat", "/etc/domus/tls/cert.pem", check=False).stdout
            if "BEGIN CERTIFICATE" not in pem:
                raise ContainerError("the proxy has no certificate yet")
            path.write_text(pem)
        return path

    def wait_healthy(self, timeout: float = 240.0) -> float:
        """Until /healthz answers 200 through the TLS proxy (its certificate verified); seconds
        it took."""
        started = time.monotonic()
        last: Any = None
        while time.monotonic() - started < timeout:
            try:
                cert = str(self.tls_certificate())
                response = requests.get(self.public_url + "/healthz", timeout=5, verify=cert)
                if response.status_code == 200:
                    return time.monotonic() - started
                last = response.text[:500]
            except (requests.RequestException, ContainerError) as exc:
                last = exc
            time.sleep(1)
        raise AssertionError(f"not healthy after {timeout:.0f} s: {last}\n{self.logs()}")


@contextlib.contextmanager
def extra_cas_for_the_build() -> Iterator[None]:
    copied = []
    for crt in sorted(SYSTEM_EXTRA_CAS.glob("*.crt")):
        target = CA_DIR / crt.name
        if not target.exists():
            shutil.copy2(crt, target)
            copied.append(target)
    try:
        yield
    finally:
        for target in copied:
            target.unlink(missing_ok=True)


@contextlib.contextmanager
def compose_stack(workdir: Path, **overrides: str) -> Iterator[ComposeStack]:
    """Build and start docker/compose.yaml under a project of its own; everything (containers,
    volumes) goes on the way out, whatever happened. The images stay cached."""
    ensure_docker()
    ensure_base_image()
    proxy_port = str(_free_port())
    settings = {
        "DOMUS_PUBLIC_HOST": "localhost",
        "DOMUS_PUBLIC_URL": f"https://localhost:{proxy_port}",
        "DOMUS_PROXY_PORT": proxy_port,
        "DOMUS_SECRET_KEY": secrets.token_urlsafe(48),
        "DOMUS_ENCRYPTION_KEYS": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "DOMUS_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "DOMUS_PG_PORT": str(_free_port()),
        "DOMUS_REDIS_PORT": str(_free_port()),
        "DOMUS_WEB1_PORT": str(_free_port()),
        "DOMUS_WEB2_PORT": str(_free_port()),
        **overrides,
    }
    env_file = workdir / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    env_file.chmod(0o600)
    stack = ComposeStack(
        project=f"domustest{os.getpid()}", env_file=env_file, settings=settings, workdir=workdir
    )
    try:
        with extra_cas_for_the_build():
            build = stack.run("build", timeout=BUILD_TIMEOUT)
        (workdir / "build.log").write_text(build.stdout + build.stderr)
        stack.run("up", "-d", timeout=600)
        yield stack
    finally:
        (workdir / "compose.log").write_text(stack.logs(tail=400))
        stack.run("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=300, check=False)
