"""Fixtures: the agent's .deb (built once per session) and an agent host in a container."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.containers import AgentHost, agent_host, build_deb, ensure_docker


def _docker_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (docker, veth pairs)")
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        pytest.skip("Docker is not installed (scripts/bootstrap.sh installs docker.io)")
    ensure_docker()


@pytest.fixture(scope="session")
def agent_deb() -> Path:
    """docker/agent/build-deb.sh's package (rebuilt only when its inputs changed)."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is missing (not a Debian system?)")
    return build_deb()


@pytest.fixture(scope="module")
def debian_agent_host(agent_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentHost]:
    """A Debian host in a container with the .deb installed by apt, started as its unit would
    start it, on 10.231.201.2 (accelerator tcg). One per test module: tests may remove it."""
    _docker_or_skip()
    with agent_host(tmp_path_factory.mktemp("agent-host"), deb=agent_deb) as host:
        yield host
