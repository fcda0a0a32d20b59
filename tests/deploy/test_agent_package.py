"""The agent's Debian package: what is in it; installed by apt on a Debian host (a container),
started as its systemd unit starts it, paired with by the console, running a real guest; then
removed (the identity stays), installed again (still the host the console pinned) and purged."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from rest_framework.test import APIClient

import agent
from agent.client import AgentClient, fetch_fingerprint
from agent.protocol import DomainSpec, HostFacts, KernelBoot, format_fingerprint
from hosts.agent import run_agent
from hosts.models import Host
from tests.deploy.containers import DEFAULTS_PATH, GUEST_DIR, UNIT_PATH, AgentHost

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
LIB = "usr/lib/domus-agent"
# Everything the package may install, outside its own two directories.
PACKAGE_PATHS = {
    "./",
    "./etc/",
    "./etc/default/",
    "./etc/default/domus-agent",
    "./lib/",
    "./lib/systemd/",
    "./lib/systemd/system/",
    "./lib/systemd/system/domus-agent.service",
    "./usr/",
    "./usr/bin/",
    "./usr/bin/domus-agent",
    "./usr/lib/",
    f"./{LIB}/",
    "./usr/share/",
    "./usr/share/doc/",
    "./usr/share/doc/domus-agent/",
    "./usr/share/doc/domus-agent/copyright",
}
CONSOLE_ONLY = {
    "django",
    "rest_framework",
    "channels",
    "celery",
    "redis",
    "uvicorn",
    "console",
    "hosts",
    "domains",
}
SLOW = 300.0  # seconds for one agent call that may wait on libvirt (TCG, 2 busy cores)


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def deb_member(deb: Path, path: str) -> str:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(f"./{path}")
        assert member is not None, path
        return member.read().decode()


def test_the_package_holds_the_agent_its_unit_and_settings_and_nothing_of_the_console(
    agent_deb: Path,
) -> None:
    assert agent_deb.name == f"domus-agent_{agent.__version__}_amd64.deb"
    assert deb_field(agent_deb, "Package") == "domus-agent"
    assert deb_field(agent_deb, "Version") == agent.__version__
    assert deb_field(agent_deb, "Architecture") == "amd64"
    depends = deb_field(agent_deb, "Depends")
    for dep in ("python3 (>= 3.11)", "python3 (<< 3.12)", "python3-libvirt", "libc6 (>= 2."):
        assert dep in depends, depends
    assert "libvirt-daemon-system" in deb_field(agent_deb, "Recommends")
    assert "domus-agent init" in deb_field(agent_deb, "Description")
    info = subprocess.run(["dpkg-deb", "--info", str(agent_deb), "conffiles"], capture_output=True, text=True)
    assert info.stdout.split() == ["/etc/default/domus-agent"]

    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(agent_deb)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    paths = []
    for line in listing:
        mode, owner, _size, _date, _time, path = line.split(maxsplit=5)
        assert owner == "root/root", line
        assert path in PACKAGE_PATHS or path.startswith(f"./{LIB}/"), f"unexpected path: {line}"
        paths.append(path)
        if path == "./usr/bin/domus-agent":
            assert mode == "-rwxr-xr-x"
    vendored = {p.removeprefix(f"./{LIB}/").split("/")[0] for p in paths if p.startswith(f"./{LIB}/")} - {""}
    top_level = {re.split(r"[-.]", name)[0] for name in vendored}
    assert not top_level & CONSOLE_ONLY, top_level & CONSOLE_ONLY
    assert not any(name.startswith("libvirt") for name in vendored), "libvirt-python comes from Debian"
    for wanted in ("agent", "aiohttp", "pydantic", "pydantic_core", "lxml", "cryptography", "pycdlib"):
        assert wanted in vendored, wanted
    assert not [p for p in paths if "__pycache__" in p or p.endswith((".pyc", ".pyx", ".h", ".c"))]
    # The agent package as it is in this tree, module for module.
    shipped = sorted(
        p.removeprefix(f"./{LIB}/") for p in paths if p.startswith(f"./{LIB}/agent/") and p.endswith(".py")
    )
    assert shipped == sorted(
        str(p.relative_to(REPO)) for p in (REPO / "agent").rglob("*.py") if "__pycache__" not in p.parts
    )

    unit = deb_member(agent_deb, "lib/systemd/system/domus-agent.service")
    assert "\nEnvironmentFile=-/etc/default/domus-agent\n" in unit
    assert "\nExecStart=/usr/bin/domus-agent serve " in unit
    assert "\nRestart=on-failure\n" in unit and "\nNoNewPrivileges=yes\n" in unit
    assert "\nEnvironment=MALLOC_ARENA_MAX=2\n" in unit  # its memory plateaus (bench/README.md)
    assert "/opt/domus" not in unit and ".venv" not in unit
    assert deb_member(agent_deb, "usr/bin/domus-agent").startswith("#!/usr/bin/python3 -I\n")
    size_mb = agent_deb.stat().st_size / 1e6
    print(f"{agent_deb.name}: {size_mb:.1f} MB, {len(paths)} entries, vendored: {sorted(vendored)}")
    assert size_mb < 15


def facts_of(host: Host) -> HostFacts:
    return run_agent(host, lambda client: client.host(), timeout=SLOW)


def dpkg_status(box: AgentHost) -> str:
    done = box.exec("dpkg-query", "--show", "--showformat=${Status}", "domus-agent", check=False)
    return done.stdout.strip() if done.returncode == 0 else "not known"


async def _run_guest(url: str, secret: str, fingerprint: str, spec: DomainSpec, box: AgentHost) -> float:
    """Define, start, see it boot and run, stop, undefine; seconds to the guest's READY line."""
    async with AgentClient(url, secret, fingerprint=fingerprint, timeout=SLOW) as client:
        info = await client.define(spec)
        assert info.state == "shutoff" and info.name == spec.name
        started = time.monotonic()
        info = await client.start(spec.uuid)
        assert info.state == "running"
        serial = b""
        async with asyncio.timeout(SLOW):
            while b"DOMUS-TEST-GUEST READY" not in serial:  # the test guest's init says so
                await asyncio.sleep(1)
                serial = await client.serial_log(spec.uuid)
        booted = time.monotonic() - started
        assert box.virsh("domstate", spec.name).strip() == "running"
        qemu_log = box.read_file(f"/var/log/libvirt/qemu/{spec.name}.log")  # QEMU's command line
        assert f"-kernel {box.pool}/{box.guest_kernel}" in qemu_log and "-accel tcg" in qemu_log
        assert [(d.uuid, d.state) for d in await client.list_domains()] == [(spec.uuid, "running")]
        info = await client.destroy(spec.uuid)
        assert info.state == "shutoff"
        await client.delete(spec.uuid, delete_disks=False)
        assert await client.list_domains() == []
    assert spec.name not in box.virsh("list", "--all", "--name")
    return booted


@pytest.mark.django_db
def test_apt_installed_agent_runs_as_its_unit_pairs_with_the_console_and_runs_a_guest(
    debian_agent_host: AgentHost, api: APIClient
) -> None:
    box = debian_agent_host
    if not (GUEST_DIR / "vmlinuz").exists():
        pytest.skip(f"no test guest in {GUEST_DIR}: run `make guest`")

    # Installed by apt, its dependencies from Debian.
    assert dpkg_status(box) == "install ok installed"
    assert "python3-libvirt" in box.exec("apt-mark", "showauto").stdout.split()
    assert box.exec("stat", "-c", "%a %U", "/var/lib/domus-agent").stdout.split() == ["700", "root"]
    verify = box.exec("systemd-analyze", "verify", UNIT_PATH)  # systemd's own reading of the unit
    assert verify.stdout.strip() == verify.stderr.strip() == "", verify
    imports = box.exec(
        "/usr/bin/python3", "-I", "-c",
        "import sys; sys.path.insert(0, '/usr/lib/domus-agent'); import importlib, pkgutil, agent\n"
        "for m in pkgutil.iter_modules(agent.__path__): importlib.import_module('agent.' + m.name)\n"
        "import pycdlib, libvirt\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'django']\n"
        "print(libvirt.__file__, agent.__file__)",
    ).stdout.split()  # fmt: skip
    assert imports == ["/usr/lib/python3/dist-packages/libvirt.py", "/usr/lib/domus-agent/agent/__init__.py"]

    # Running as the unit runs it: the command line comes from ExecStart, the settings from
    # /etc/default/domus-agent (the accelerator) and the unit's defaults (the rest).
    argv, env = box.unit_command()
    assert argv[:2] == ["/usr/bin/domus-agent", "serve"] and env["DOMUS_AGENT_ACCEL"] == "tcg"
    pid = box.exec("cat", "/run/domus-agent.test-pid").stdout.strip()
    cmdline = box.exec("cat", f"/proc/{pid}/cmdline").stdout.split("\0")[:-1]
    assert cmdline == ["/usr/bin/python3", "-I", *argv]  # the launcher's #! line, then ExecStart
    environ = box.exec("cat", f"/proc/{pid}/environ").stdout.split("\0")[:-1]
    assert dict(item.split("=", 1) for item in environ) == env
    assert "--accel tcg --state-dir /var/lib/domus-agent" in " ".join(argv)
    assert "accelerator: tcg (--accel tcg requested)" in box.agent_log.read_text()

    # Paired with as the console pairs: POST /api/v1/hosts/ with the code and fingerprint.
    assert asyncio.run(fetch_fingerprint(box.url)) == box.fingerprint
    response = api.post(
        "/api/v1/hosts/",
        {
            "name": box.name,
            "url": box.url,
            "pairing_code": box.pairing_code,
            "fingerprint": format_fingerprint(box.fingerprint),
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    host = Host.objects.get(name=box.name)
    assert host.fingerprint == box.fingerprint and host.url == f"https://{box.address}:8901"

    facts = facts_of(host)
    libvirt_version = box.exec("dpkg-query", "--show", "--showformat=${Version}", "libvirt-daemon").stdout
    assert (facts.hostname, facts.hypervisor, facts.accel, facts.kvm_usable) == (
        box.name,
        "qemu",
        "tcg",
        False,
    )
    assert facts.agent_version == agent.__version__ and facts.arch == "x86_64"
    assert libvirt_version.startswith(facts.libvirt_version + "-"), (facts.libvirt_version, libvirt_version)
    assert facts.default_pool_path == box.pool and facts.cpus >= 1 and facts.memory_mib > 0
    print(f"facts: {facts.model_dump(exclude={'capabilities', 'resources'})}")

    # A real guest: direct kernel boot of the test kernel and initrd in the host's pool, under TCG.
    spec = DomainSpec(
        uuid=uuid.uuid4(),
        name="domus-deploy-guest",
        memory_mib=256,
        boot=KernelBoot(kernel=box.guest_kernel, initrd=box.guest_initrd, cmdline="console=ttyS0 quiet"),
    )
    booted = asyncio.run(_run_guest(host.url, host.secret, host.fingerprint, spec, box))
    print(f"guest booted to READY in {booted:.1f}s")
    assert box.exists(f"{box.pool}/{box.guest_kernel}")  # boot files are the pool's, never deleted

    # `apt-get remove` (after `systemctl stop`): the program goes, the identity and settings stay.
    assert box.stop_agent() == 0
    assert "stopping" in box.agent_log.read_text()
    removed = box.exec("apt-get", "remove", "--yes", "domus-agent")
    assert "Removing domus-agent" in removed.stdout
    assert dpkg_status(box) == "deinstall ok config-files"
    for path in ("/usr/lib/domus-agent", "/usr/bin/domus-agent", UNIT_PATH):
        assert not box.exists(path), f"{path} survived apt-get remove"
    for name in ("key.pem", "cert.pem", "consoles.json"):
        assert box.exists(f"/var/lib/domus-agent/{name}"), name
    assert "\nDOMUS_AGENT_ACCEL=tcg\n" in box.read_file(DEFAULTS_PATH)

    # Installed again (no network: its dependencies are still there): the same host to the console.
    again = box.exec("apt-get", "install", "--yes", "--no-install-recommends", "/root/domus-agent.deb")
    assert "Setting up domus-agent" in again.stdout
    assert "domus-agent init" not in again.stdout  # no next-steps banner: it is initialised
    box.start_agent()
    assert asyncio.run(fetch_fingerprint(box.url)) == host.fingerprint
    assert facts_of(host).hostname == box.name  # the secret the console holds still works

    # `apt-get purge`: settings and identity go too.
    assert box.stop_agent() == 0
    box.exec("apt-get", "purge", "--yes", "domus-agent")
    assert dpkg_status(box) in ("not known", "unknown ok not-installed")
    for path in (DEFAULTS_PATH, "/var/lib/domus-agent", "/usr/lib/domus-agent"):
        assert not box.exists(path), f"{path} survived apt-get purge"
    assert (
        "python3-libvirt"
        in box.exec("dpkg-query", "--show", "--showformat=${Package}\n", "python3-libvirt").stdout
    )
