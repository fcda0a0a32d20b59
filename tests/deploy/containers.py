"""Docker for deployment tests: an engine, the base image, and an agent host in a container.

- `ensure_docker()`: a Docker engine that answers. When none does, start Debian's dockerd
  (`--iptables=false --bridge=none`: no NAT, no docker0) in the background, its log in
  `.cache/dockerd/`; it stays running for the next test run. No systemd needed.
- `ensure_base_image()`: `debian:bookworm`, the name users elsewhere pull, so Dockerfiles say
  `FROM debian:bookworm` and work anywhere. No registry is reachable here, Debian's mirror is:
  when absent, the image is `debootstrap --variant=minbase` piped into `docker import`, with the
  official image's apt sources (bookworm, -updates, -security).
- `agent_host(workdir)`: a Debian KVM host in a container with the agent's .deb installed by apt,
  libvirtd and virtlogd running (no systemd: started directly), `domus-agent init` done, and the
  agent started exactly as its systemd unit would start it (ExecStart with the unit's
  Environment= and EnvironmentFile=, read from the installed unit). Yields an AgentHost with the
  URL, fingerprint and pairing code `init` printed. Everything goes on the way out, also on a
  failure or Ctrl-C; the images stay cached (building the host image takes minutes).

The container has `--network none` and then its own address, the way tests/fleet/isolated.py
gives its hosts one: a veth pair, root side `dm-<name>` 10.231.<index>.1/24, inside `eth0`
10.231.<index>.2/24 (its network namespace is also named `domus-<name>` with `ip netns attach`,
so isolated.py's helpers lock, check and remove it). The default index, 201, stays clear of
isolated.py's hosts (1, 2, ...). Test traffic goes to that address only.

Two things differ from a real host, both forced by this machine and both harmless to what is
tested: Docker's `--privileged` fails here ("unable to apply caps: operation not permitted":
this machine's processes, dockerd's too, lack CAP_SYS_RESOURCE in their bounding set), so the
container gets every other capability, no seccomp or AppArmor profile and the device cgroup
opened instead (which works on any Docker host, so there is one way to start it); Docker then
mounts the cgroup hierarchies read-only, so libvirt puts guests in no cgroup
(`cgroup_controllers = [ ]`, as on isolated.py's hosts). QEMU runs guests under TCG (domain type
'qemu'): nested KVM is broken here, and the container has no /dev/kvm anyway; the host's
/etc/default/domus-agent says `DOMUS_AGENT_ACCEL=tcg`, as an operator of such a host would.

A crashed run leaves a container, a veth and a netns behind: the next start of a host of the same
name removes them first (or `python -m tests.deploy.containers cleanup NAME`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.fleet.isolated import (
    FLEET_NET,
    LOCK_DIR,
    NAME_RE,
    NETNS_PREFIX,
    SUBNET,
    VETH_PREFIX,
    IsolatedHostError,
    _ip,
    _lock,
    _remove_network,
)

REPO = Path(__file__).resolve().parents[2]
BUILD_DEB = REPO / "docker" / "agent" / "build-deb.sh"
DEB_DIR = REPO / ".cache" / "deb"
DOCKERD_DIR = REPO / ".cache" / "dockerd"
GUEST_DIR = Path(os.environ.get("DOMUS_GUEST_DIR", REPO / ".cache" / "guest"))
HOST_DOCKERFILE = Path(__file__).with_name("agent-host.Dockerfile")

BASE_IMAGE = "debian:bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
HOST_IMAGE = "domus-test/agent-host:latest"
HOST_LABEL = "org.domus.test=agent-host"  # also in agent-host.Dockerfile
CONTAINER_PREFIX = "domus-agent-host-"

DEFAULT_INDEX = 201  # 10.231.201.0/24: clear of tests/fleet/isolated.py's small indexes
AGENT_PORT = 8901
UNIT_PATH = "/lib/systemd/system/domus-agent.service"
DEFAULTS_PATH = "/etc/default/domus-agent"
POOL = "/var/lib/libvirt/images"
GUEST_KERNEL = "domus-test-vmlinuz"  # in POOL: the test guest's kernel and initrd (make guest)
GUEST_INITRD = "domus-test-initrd.img"
AGENT_PID_FILE = "/run/domus-agent.test-pid"  # the pid systemd would call MainPID
# What systemd gives every system service before the unit's own settings (its default PATH on
# a Debian system, and C.UTF-8 when no locale is configured).
SYSTEMD_BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# `--privileged` is refused here (see the docstring); this is all of it but CAP_SYS_RESOURCE.
CONTAINER_SECURITY = [
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--security-opt=systempaths=unconfined",
    "--device-cgroup-rule=a *:* rwm",
]

DOCKER_TIMEOUT = 120.0
BUILD_TIMEOUT = 1800.0  # the first host image downloads libvirt and QEMU (~400 MB installed)
READY_TIMEOUT = 300.0  # libvirtd probes QEMU's capabilities on its first call (seconds, slow CPUs)


class ContainerError(RuntimeError):
    pass


# --- docker ------------------------------------------------------------------------------------


def docker(
    *args: str, timeout: float = DOCKER_TIMEOUT, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`docker <args>`; ContainerError with its stderr when it fails (and `check`)."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the classic builder: no registry look-ups
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    try:
        result = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, env=env, **stdin
        )
    except subprocess.TimeoutExpired as exc:
        raise ContainerError(f"docker {shlex.join(args[:4])} took over {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        raise ContainerError(
            f"docker {shlex.join(args[:6])} failed ({result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def _docker_answers() -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", timeout=15, check=False).returncode == 0
    except ContainerError:
        return False


@contextlib.contextmanager
def _waiting_lock(key: str) -> Iterator[None]:
    """An exclusive flock shared with other test processes (blocks until it is ours)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_DIR / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def ensure_docker(timeout: float = 120.0) -> None:
    """A Docker engine answers `docker version`: the one running, or a dockerd started now (in
    the background, in a session of its own, so it outlives this process; left running)."""
    if _docker_answers():
        return
    missing = [tool for tool in ("docker", "dockerd") if shutil.which(tool) is None]
    if missing:
        raise ContainerError(f"{', '.join(missing)} not installed: run `make setup` (installs docker.io)")
    if os.geteuid() != 0:
        raise ContainerError("no Docker engine answers, and starting dockerd needs root")
    with _waiting_lock("dockerd"):
        if _docker_answers():
            return
        log = DOCKERD_DIR / "dockerd.log"
        if not _dockerd_alive():  # else it is starting up (or stuck): wait for it, below
            DOCKERD_DIR.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                # setsid --fork: dockerd is nobody's child here, and no Ctrl-C of ours reaches it.
                subprocess.run(
                    ["setsid", "--fork", "dockerd", "--iptables=false", "--bridge=none"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
        deadline = time.monotonic() + timeout
        while not _docker_answers():
            if time.monotonic() > deadline:
                raise ContainerError(f"dockerd did not answer within {timeout:.0f}s; {log}:\n{_tail(log)}")
            time.sleep(0.5)


def _dockerd_alive() -> bool:
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
    return False


def _image_exists(image: str) -> bool:
    return docker("image", "inspect", "--format", "{{.Id}}", image, check=False).returncode == 0


DEBIAN_SOURCES = f"""\
Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {MIRROR}-security
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def ensure_base_image() -> None:
    """`debian:bookworm`: kept when present; else debootstrapped from Debian's mirror (minutes)."""
    ensure_docker()
    if _image_exists(BASE_IMAGE):
        return
    if shutil.which("debootstrap") is None:
        raise ContainerError(f"no {BASE_IMAGE} image and no debootstrap: run `make setup`")
    with _waiting_lock("base-image"):
        if _image_exists(BASE_IMAGE):
            return
        with tempfile.TemporaryDirectory(prefix="domus-debootstrap-", dir="/var/tmp") as tmp:
            root, log = Path(tmp) / "rootfs", Path(tmp) / "debootstrap.log"
            with open(log, "wb") as out:
                done = subprocess.run(
                    ["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=BUILD_TIMEOUT,
                )
            if done.returncode != 0:
                raise ContainerError(f"debootstrap failed ({done.returncode}):\n{_tail(log)}")
            # As the official image: deb822 sources with updates and security, no package lists
            # or downloaded packages (a Dockerfile runs apt-get update first).
            (root / "etc/apt/sources.list").unlink(missing_ok=True)
            (root / "etc/apt/sources.list.d/debian.sources").write_text(DEBIAN_SOURCES)
            for junk in [*root.glob("var/lib/apt/lists/*_*"), *root.glob("var/cache/apt/archives/*.deb")]:
                junk.unlink()
            tar = subprocess.Popen(
                ["tar", "-C", str(root), "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*",
                 "--exclude=./sys/*", "-c", "."],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            try:
                imported = subprocess.run(
                    ["docker", "import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE],
                    stdin=tar.stdout,
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT,
                )
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                tar.wait()
            if imported.returncode != 0 or tar.returncode != 0:
                raise ContainerError(
                    f"docker import of the debootstrapped tree failed: {imported.stderr.strip()}"
                )


# --- the package and the host image ------------------------------------------------------------


def build_deb(out_dir: Path = DEB_DIR) -> Path:
    """docker/agent/build-deb.sh: the agent's .deb (rebuilt only when its inputs changed)."""
    result = subprocess.run(
        [str(BUILD_DEB), str(out_dir)], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    if result.returncode != 0:
        raise ContainerError(f"build-deb.sh failed ({result.returncode}):\n{result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1])


def build_host_image(deb: Path, log: Path) -> str:
    """HOST_IMAGE from tests/deploy/agent-host.Dockerfile with `deb` installed; Docker's layer
    cache keeps the slow layer (libvirt, QEMU) and, for the same .deb, all of it."""
    ensure_base_image()
    with tempfile.TemporaryDirectory(prefix="domus-agent-host-") as tmp:
        context = Path(tmp)
        shutil.copyfile(HOST_DOCKERFILE, context / "Dockerfile")
        shutil.copyfile(deb, context / "domus-agent.deb")
        with open(log, "w") as out:
            done = subprocess.run(
                ["docker", "build", "--network=host", "--tag", HOST_IMAGE, str(context)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT,
                env={**os.environ, "DOCKER_BUILDKIT": "0"},
            )
    if done.returncode != 0:
        raise ContainerError(f"docker build of {HOST_IMAGE} failed ({done.returncode}); {log}:\n{_tail(log)}")
    # The image this one replaced (an older .deb), not the cached layers under it.
    docker("image", "prune", "--force", "--filter", f"label={HOST_LABEL}", check=False)
    return HOST_IMAGE


# --- systemd, without systemd ------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file: section -> key -> its values in order (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    logical = ""
    for raw in text.splitlines():
        if raw.endswith("\\"):  # continuation: the line goes on
            logical += raw[:-1] + " "
            continue
        line, logical = (logical + raw).strip(), ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_environment_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads an EnvironmentFile= (comments, quotes)."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = shlex.split(value)[0]
        env[key.strip()] = value
    return env


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$")


def expand_exec(command: str, env: Mapping[str, str]) -> list[str]:
    """An Exec*= line as systemd runs it: words split with quoting; `${VAR}` (alone or in a word)
    becomes exactly the value, `$VAR` as a word of its own is split at whitespace."""
    words = shlex.split(command)
    words[0] = words[0].lstrip("-:+!")  # flags: "-" ignore failure, "+" full privileges ...
    if words[0].startswith("@"):
        raise ContainerError(f"ExecStart with '@' (argv[0] override) is not emulated: {command}")
    argv: list[str] = []
    for word in words:
        if match := re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word):
            argv.extend(env.get(match.group(1), "").split())
        else:
            argv.append(_VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), ""), word))
    return argv


# --- the agent host ----------------------------------------------------------------------------


@dataclass
class AgentHost:
    name: str  # also the container's hostname
    index: int
    container: str
    address: str  # 10.231.<index>.2, reachable from the root namespace
    gateway: str  # 10.231.<index>.1, the root namespace as seen inside
    veth: str
    netns: str
    workdir: Path  # logs: image build, agent, libvirt (copied out on the way out)
    url: str = ""
    fingerprint: str = ""  # lowercase hex, as the console stores it
    pairing_code: str = ""  # from the first `domus-agent init`; single use
    init_output: str = ""
    pool: str = POOL
    guest_kernel: str = GUEST_KERNEL  # volume names in `pool`, for a KernelBoot
    guest_initrd: str = GUEST_INITRD
    _agent: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def agent_log(self) -> Path:
        return self.workdir / "agent.log"

    def exec(
        self, *argv: str, input: str | None = None, check: bool = True, timeout: float = DOCKER_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the container as root; ContainerError with its output when it fails."""
        interactive = ["--interactive"] if input is not None else []
        return docker("exec", *interactive, self.container, *argv, input=input, check=check, timeout=timeout)

    def read_file(self, path: str) -> str:
        return self.exec("cat", path).stdout

    def write_file(self, path: str, text: str) -> None:
        self.exec("sh", "-c", 'cat > "$1"', "sh", path, input=text)

    def exists(self, path: str) -> bool:
        return self.exec("test", "-e", path, check=False).returncode == 0

    def init(self) -> tuple[str, str]:
        """`domus-agent init --url <url>`: (fingerprint as lowercase hex, a new pairing code)."""
        out = self.exec("domus-agent", "init", "--url", f"https://{self.address}:{AGENT_PORT}").stdout
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in out.splitlines() if line.startswith("  "))
        )
        try:
            url = fields["URL"]
            fingerprint = fields["Fingerprint"].removeprefix("SHA256:").replace(":", "").lower()
            code = fields["Pairing code"].split()[0]
        except (KeyError, IndexError) as exc:
            raise ContainerError(f"unexpected `domus-agent init` output:\n{out}") from exc
        self.url, self.fingerprint, self.init_output = url, fingerprint, out
        return fingerprint, code

    def unit_command(self) -> tuple[list[str], dict[str, str]]:
        """The installed unit's ExecStart as systemd would run it, and its environment:
        Environment= first, then each EnvironmentFile= (a leading '-': may be missing)."""
        service = parse_unit(self.read_file(UNIT_PATH)).get("Service", {})
        env = dict(SYSTEMD_BASE_ENV)
        for line in service.get("Environment", []):
            for word in shlex.split(line):
                key, _, value = word.partition("=")
                env[key] = value
        for path in service.get("EnvironmentFile", []):
            optional, path = path.startswith("-"), path.removeprefix("-")
            if optional and not self.exists(path):
                continue
            env.update(parse_environment_file(self.read_file(path)))
        for state in service.get("StateDirectory", []):  # systemd makes it, with this mode
            mode = (service.get("StateDirectoryMode") or ["0755"])[-1]
            self.exec("install", "-d", "-m", mode, f"/var/lib/{state}")
            env["STATE_DIRECTORY"] = f"/var/lib/{state}"
        exec_start = service.get("ExecStart", [])
        if len(exec_start) != 1:
            raise ContainerError(f"{UNIT_PATH}: want one ExecStart=, got {exec_start}")
        return expand_exec(exec_start[0], env), env

    def start_agent(self, timeout: float = READY_TIMEOUT) -> list[str]:
        """Start the agent as its unit would (see unit_command), in /, and wait until its port
        answers; returns the command line. Its output goes to `agent_log`."""
        if self.agent_running():
            raise ContainerError("the agent is running already")
        argv, env = self.unit_command()
        with open(self.agent_log, "ab") as out:
            out.write(f"--- {shlex.join(argv)}\n".encode())
            out.flush()
            self._agent = subprocess.Popen(
                # sh records the pid (systemd's MainPID) and becomes the command: same argv, same env.
                ["docker", "exec", "--workdir", "/", self.container, "sh", "-c",
                 f'echo $$ > {AGENT_PID_FILE}; exec "$@"', "sh",
                 "env", "-i", *(f"{k}={v}" for k, v in sorted(env.items())), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _port_open(self.address, AGENT_PORT):
            if self._agent.poll() is not None:
                raise ContainerError(
                    f"the agent exited ({self._agent.returncode}) before it listened:\n{_tail(self.agent_log)}"
                )
            if time.monotonic() > deadline:
                raise ContainerError(
                    f"the agent did not listen within {timeout:.0f}s:\n{_tail(self.agent_log)}"
                )
            time.sleep(0.2)
        return argv

    def agent_running(self) -> bool:
        return self._agent is not None and self._agent.poll() is None

    def stop_agent(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the agent, as `systemctl stop` does (SIGKILL after `timeout`); its exit status."""
        if self._agent is None:
            return None
        if self._agent.poll() is None:
            self.exec("sh", "-c", f"kill -TERM $(cat {AGENT_PID_FILE})", check=False)
            try:
                self._agent.wait(timeout)
            except subprocess.TimeoutExpired:
                self.exec("sh", "-c", f"kill -KILL $(cat {AGENT_PID_FILE})", check=False)
                self._agent.wait(10)
        code, self._agent = self._agent.returncode, None
        return code

    def virsh(self, *args: str, timeout: float = READY_TIMEOUT) -> str:
        return self.exec("virsh", "-c", "qemu:///system", *args, timeout=timeout).stdout


def _port_open(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def agent_host(
    workdir: Path,
    *,
    name: str = "debhost",
    index: int = DEFAULT_INDEX,
    accel: str | None = "tcg",
    deb: Path | None = None,
    start: bool = True,
) -> Iterator[AgentHost]:
    """An agent host in a container (see the module docstring). `accel` goes into
    /etc/default/domus-agent (None: leave the packaged default, auto). With `start=False` the
    agent is initialised but not started (start it with `host.start_agent()`)."""
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"host name {name!r}: want [a-z][a-z0-9-]{{0,11}}")
    if not 1 <= index <= 254:
        raise ValueError(f"host index {index}: want 1..254")
    if os.geteuid() != 0:
        raise ContainerError("an agent host in a container needs root (docker, veth)")
    workdir.mkdir(parents=True, exist_ok=True)
    host = AgentHost(
        name=name,
        index=index,
        container=CONTAINER_PREFIX + name,
        address=f"{SUBNET}.{index}.2",
        gateway=f"{SUBNET}.{index}.1",
        veth=VETH_PREFIX + name,
        netns=NETNS_PREFIX + name,
        workdir=workdir,
    )
    locks: list[int] = []
    try:
        # Shared with tests/fleet/isolated.py: no other host takes this name or subnet meanwhile.
        locks.append(_lock(f"name-{name}"))
        locks.append(_lock(f"index-{index}"))
        ensure_docker()
        deb = deb or build_deb()
        image = build_host_image(deb, workdir / "image-build.log")
        _remove_container(host)  # what a crashed run left
        _start_container(host, image)
        _setup_network(host)
        _prepare(host, accel)
        _start_libvirt(host)
        host.pairing_code = host.init()[1]
        if start:
            host.start_agent()
        yield host
    finally:
        try:
            if host.agent_running():
                host.stop_agent(timeout=10)
            _collect_logs(host)
        finally:
            _remove_container(host)
            for fd in locks:
                os.close(fd)


def _remove_container(host: AgentHost) -> None:
    """Container (its guests and daemons with it), veth and netns name; idempotent."""
    if host._agent is not None and host._agent.poll() is None:
        host._agent.kill()
        host._agent.wait(10)
    host._agent = None
    docker("rm", "--force", "--volumes", host.container, check=False, timeout=DOCKER_TIMEOUT)
    try:
        _remove_network(host.name)  # kills what is left in the netns, deletes veth and name
    except IsolatedHostError as exc:
        raise ContainerError(f"host {host.name}: {exc}") from exc


def _start_container(host: AgentHost, image: str) -> None:
    docker(
        "run", "--detach", "--name", host.container, "--hostname", host.name,
        "--label", HOST_LABEL, "--network", "none", "--init", *CONTAINER_SECURITY,
        image, "sleep", "infinity",
    )  # fmt: skip


def _setup_network(host: AgentHost) -> None:
    """The container's network namespace gets a name and a veth, as isolated.py's hosts do."""
    in_use = _ip("-o", "-4", "addr", "show", "to", f"{SUBNET}.{host.index}.0/24")
    if in_use.strip():
        raise ContainerError(f"{SUBNET}.{host.index}.0/24 is already in use: {in_use.strip()}")
    pid = docker("inspect", "--format", "{{.State.Pid}}", host.container).stdout.strip()
    _ip("netns", "attach", host.netns, pid)
    _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
    _ip("addr", "add", f"{host.gateway}/24", "dev", host.veth)
    _ip("link", "set", host.veth, "up")
    _ip("-n", host.netns, "link", "set", "lo", "up")
    _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
    _ip("-n", host.netns, "link", "set", "eth0", "up")
    _ip("-n", host.netns, "route", "add", FLEET_NET, "via", host.gateway)
    Path(f"/proc/sys/net/ipv4/conf/{host.veth}/forwarding").write_text("1\n")  # to isolated.py's hosts


def _prepare(host: AgentHost, accel: str | None) -> None:
    """The test guest in the default pool; libvirt as this container allows; the accelerator."""
    for src, dst in ((GUEST_DIR / "vmlinuz", GUEST_KERNEL), (GUEST_DIR / "initrd.img", GUEST_INITRD)):
        if src.exists():
            docker("cp", str(src), f"{host.container}:{POOL}/{dst}")
    # libvirt-daemon-system's postinst makes these on a real host; make sure of them (no systemd).
    host.exec(
        "sh", "-c",
        "getent passwd libvirt-qemu >/dev/null || useradd --system --gid kvm --home-dir /var/lib/libvirt"
        " --no-create-home --shell /usr/sbin/nologin libvirt-qemu; mkdir -p /var/log/libvirt/qemu",
    )  # fmt: skip
    conf = host.read_file("/etc/libvirt/qemu.conf")
    host.write_file(
        "/etc/libvirt/qemu.conf",
        conf
        + "\n# tests/deploy: Docker mounts the cgroup hierarchies read-only here\ncgroup_controllers = [ ]\n",
    )
    for daemon in ("libvirtd", "virtlogd"):  # a log file, as journald is absent
        path = f"/etc/libvirt/{daemon}.conf"
        host.write_file(
            path, host.read_file(path) + f'\nlog_outputs = "3:file:/var/log/libvirt/{daemon}.log"\n'
        )
    if accel is not None:
        text = host.read_file(DEFAULTS_PATH)
        text, count = re.subn(r"(?m)^#?DOMUS_AGENT_ACCEL=.*$", f"DOMUS_AGENT_ACCEL={accel}", text)
        if count != 1:
            raise ContainerError(f"{DEFAULTS_PATH} has no DOMUS_AGENT_ACCEL line to set")
        host.write_file(DEFAULTS_PATH, text)


def _start_libvirt(host: AgentHost, timeout: float = READY_TIMEOUT) -> None:
    """virtlogd and libvirtd as root, daemonised (no systemd to socket-activate them)."""
    host.exec("virtlogd", "--daemon")
    host.exec("libvirtd", "--daemon")
    deadline = time.monotonic() + timeout
    while True:
        done = host.exec("virsh", "-c", "qemu:///system", "version", check=False, timeout=timeout)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            log = host.exec("tail", "-n", "20", "/var/log/libvirt/libvirtd.log", check=False).stdout
            raise ContainerError(f"libvirtd did not answer: {done.stderr.strip()}\n{log}")
        time.sleep(0.5)


def _collect_logs(host: AgentHost) -> None:
    """libvirt's logs (daemons, each guest) next to the agent's, before the container goes."""
    if docker("container", "inspect", host.container, check=False).returncode == 0:
        docker("cp", f"{host.container}:/var/log/libvirt", str(host.workdir / "libvirt-logs"), check=False)


def cleanup(name: str) -> None:
    """Remove what a crashed run left of host `name` (refuses while a live process holds it)."""
    fd = _lock(f"name-{name}")
    try:
        host = AgentHost(
            name=name,
            index=0,
            container=CONTAINER_PREFIX + name,
            address="",
            gateway="",
            veth=VETH_PREFIX + name,
            netns=NETNS_PREFIX + name,
            workdir=Path(),
        )
        _remove_container(host)
    finally:
        os.close(fd)


def _main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or argv[0] != "cleanup":
        print("usage: python -m tests.deploy.containers cleanup NAME...", file=sys.stderr)
        return 2
    for name in argv[1:]:
        cleanup(name)
        print(f"cleaned up {CONTAINER_PREFIX}{name}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
