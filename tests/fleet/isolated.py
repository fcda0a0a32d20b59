"""Several libvirt "hosts" on this one machine, for end-to-end tests of a fleet.

An IsolatedHost is a libvirtd and a virtlogd of its own, running in namespaces of their own:

- network: `ip netns` `domus-<name>`, joined to the root namespace by a veth pair: root side
  `dm-<name>` 10.231.<index>.1/24, inside `eth0` 10.231.<index>.2/24 (plus `lo`, and a route to
  10.231.0.0/16 through the root side, which forwards between the veths only, so hosts reach each
  other; the machine-wide ip_forward is left alone);
- mount: /etc/libvirt (a scrubbed copy of the real one), /var/lib/libvirt, /var/cache/libvirt and
  /var/log/libvirt are bind mounts of directories under `<workdir>/<name>/`, /run/libvirt is a
  fresh tmpfs, /etc/hosts names the host, and /sys is a fresh sysfs of the namespace. The fresh
  sysfs has no cgroup hierarchies, so libvirt puts guests in no cgroup at all (qemu.conf also says
  `cgroup_controllers = [ ]`): two daemons with a guest of the same name never collide on
  machine/qemu-1-<name>.libvirt-qemu;
- UTS: the hostname is <name>; each libvirtd also gets its own `host_uuid` (libvirt refuses to
  migrate between two hosts that share either).

Everything else is shared with the root namespace: the repo, the venv, /tmp, /dev, /proc and the
PID space (`ps` shows every host's qemu), CPUs and memory (same capabilities everywhere).

The namespaces are held by a `sleep` started through `nsenter --net` + `unshare --mount --uts`;
every later command enters them with `nsenter --target <that pid>`. Without KVM here, guests must
use domain type 'qemu' (TCG).

By default QEMU runs as root on these hosts (the root libvirtd runs it as libvirt-qemu): pytest's
tmp_path sits under /tmp/pytest-of-root (mode 0700, re-tightened by every pytest session), which
libvirt-qemu could not traverse to reach images in `pool_dir`. Pass `qemu_as_root=False` with a
workdir that libvirt-qemu can traverse to keep the distribution's user.

A run that crashed leaves its namespaces, daemons and guests behind: the next start of a host of
the same name (or `python -m tests.fleet.isolated cleanup <name>...`) removes them first. A host
in use by a live process is never touched: each one holds a lock (flock) for its name and index.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

URI = "qemu:///system"
NETNS_PREFIX = "domus-"
VETH_PREFIX = "dm-"  # root side of the veth pair; an interface name has at most 15 characters
SUBNET = "10.231"  # host <index> is on 10.231.<index>.0/24
FLEET_NET = f"{SUBNET}.0.0/16"
LOCK_DIR = Path("/run/lock/domus-fleet") if Path("/run/lock").is_dir() else Path("/tmp/domus-fleet-locks")
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,11}")  # keeps dm-<name> within 15 characters

# Private per host: path inside -> directory under <workdir>/<name>/ bind-mounted there.
BIND_DIRS = {
    "/etc/libvirt": "etc",
    "/var/lib/libvirt": "lib",
    "/var/cache/libvirt": "cache",
    "/var/log/libvirt": "log",
}
# Private per host: a fresh tmpfs (sockets, pid files, runtime state of guests).
RUN_DIRS = ["/run/libvirt"]
if os.path.realpath("/var/run/libvirt") != "/run/libvirt":
    RUN_DIRS.append("/var/run/libvirt")

TERM_TIMEOUT = 5.0  # for the processes inside to exit on SIGTERM, before SIGKILL
KILL_TIMEOUT = 10.0


class IsolatedHostError(RuntimeError):
    pass


@dataclass
class IsolatedHost:
    name: str  # e.g. "h1"
    address: str  # e.g. "10.231.1.2", reachable from the root namespace
    netns: str  # ip netns name
    uri: str  # "qemu:///system" as seen inside
    pool_dir: str  # image pool directory of this host only (same path inside and outside)
    index: int = 0
    gateway: str = ""  # root side of the veth, e.g. "10.231.1.1": the root namespace as seen inside
    veth: str = ""  # root side interface name
    state_dir: Path = field(default_factory=Path)  # <workdir>/<name>: bind sources, pool, logs
    start_seconds: float = 0.0  # how long start_isolated_host took
    stop_seconds: float = 0.0
    _holder: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _daemons: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _locks: list[int] = field(default_factory=list, repr=False)
    _probe_cpu: int | None = field(default=None, repr=False)

    # --- running things inside ---------------------------------------------------------------

    @property
    def holder_pid(self) -> int:
        if self._holder is None or self._holder.poll() is not None:
            raise IsolatedHostError(f"host {self.name}: its namespaces are gone (stopped?)")
        return self._holder.pid

    def command(
        self, argv: Sequence[str | os.PathLike[str]], cwd: str | os.PathLike[str] | None = None
    ) -> list[str]:
        """`argv` wrapped to run inside this host's namespaces, in `cwd` (default: ours).

        (Entering a mount namespace resets the working directory to its root, so `env --chdir`
        sets it again once inside; the same path then names what the host sees there.)"""
        return [
            "nsenter",
            f"--target={self.holder_pid}",
            "--mount",
            "--net",
            "--uts",
            "--",
            "env",
            f"--chdir={os.fspath(cwd) if cwd is not None else os.getcwd()}",
            "--",
            *(os.fspath(a) for a in argv),
        ]

    def popen(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen inside this host; the pid is that of the command itself."""
        cwd = kwargs.pop("cwd", None)
        return subprocess.Popen(self.command(argv, cwd), **kwargs)

    def run(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside this host."""
        cwd = kwargs.pop("cwd", None)
        return subprocess.run(self.command(argv, cwd), **kwargs)

    def virsh(self, *args: str, timeout: float = 300.0) -> str:
        """`virsh -c qemu:///system <args>` inside; its stdout, or IsolatedHostError with stderr."""
        result = self.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise IsolatedHostError(
                f"host {self.name}: virsh {shlex.join(args)} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return str(result.stdout)

    def inside_path(self, path: str | os.PathLike[str]) -> Path:
        """An absolute path as this host sees it, readable from the root namespace (through
        /proc/<pid>/root), e.g. inside_path("/var/log/libvirt/qemu/x.log")."""
        return Path(f"/proc/{self.holder_pid}/root") / Path(path).relative_to("/")

    def pids(self) -> list[int]:
        """Every process in this host (its namespace holder, daemons, guests, our commands)."""
        return _netns_pids(self.netns)

    # --- lifetime ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Power off the guests, stop the daemons and whatever else runs inside, remove the veth and
        the namespaces (the mounts go with them). Idempotent; safe on a half-started host.

        Every process inside (libvirtd, virtlogd, each QEMU, commands started with popen) gets
        SIGTERM at once, then SIGKILL after TERM_TIMEOUT: for a guest that is what `virsh destroy`
        does, without waiting for libvirt's bookkeeping (its state goes away with the host; and
        here `virsh destroy` takes ~1.5 s a guest, as PID 1 is slow to reap the QEMU)."""
        if not self._locks:  # stopped already: the name may belong to a newer host by now
            return
        started = time.monotonic()
        problems: list[str] = []
        holder = {self._holder.pid} if self._holder is not None else set()
        _signal_all(self.netns, signal.SIGTERM, spare=holder, timeout=TERM_TIMEOUT)
        try:
            _remove_network(self.name)  # SIGKILLs every process left inside, the holder too
        except IsolatedHostError as exc:
            problems.append(str(exc))
        for daemon in self._daemons:
            try:
                daemon.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"{daemon.args!r} (pid {daemon.pid}) survived SIGKILL")
        self._daemons.clear()
        if self._holder is not None:
            try:
                self._holder.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"namespace holder {self._holder.pid} survived SIGKILL")
            else:
                if self._holder.stdout is not None:
                    self._holder.stdout.close()
                self._holder = None
        for fd in self._locks:
            os.close(fd)  # releases the flock
        self._locks.clear()
        self.stop_seconds = time.monotonic() - started
        if problems:
            raise IsolatedHostError(f"host {self.name}: unclean stop: " + "; ".join(problems))

    def __enter__(self) -> IsolatedHost:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- start-up steps ------------------------------------------------------------------------

    def _prepare_dirs(self, *, qemu_as_root: bool, seed_capabilities: bool) -> None:
        d = self.state_dir
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        d.chmod(0o755)
        etc = d / BIND_DIRS["/etc/libvirt"]
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        _scrub_libvirt_config(etc)
        qemu: dict[str, str] = {"cgroup_controllers": "[ ]"}
        if qemu_as_root:
            qemu |= {"user": '"+0"', "group": '"+0"'}
        _set_conf(etc / "qemu.conf", qemu)
        host_uuid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}.domus-fleet.test")
        _set_conf(
            etc / "libvirtd.conf",
            {"host_uuid": f'"{host_uuid}"', "log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"'},
        )
        _set_conf(etc / "virtlogd.conf", {"log_outputs": '"3:file:/var/log/libvirt/virtlogd.log"'})
        for rel, mode in [
            ("lib", 0o755),
            ("lib/images", 0o711),
            ("lib/boot", 0o711),
            ("cache", 0o711),
            ("cache/qemu", 0o711),
            ("cache/qemu/capabilities", 0o755),
            ("log", 0o755),
            ("log/qemu", 0o755),
            ("pool", 0o755),
        ]:
            (d / rel).mkdir()
            (d / rel).chmod(mode)
        if seed_capabilities:
            # Probing QEMU takes ~10 s; the root libvirtd's cache was made from the very same
            # binaries (libvirt checks that, and probes again if anything differs).
            with contextlib.suppress(OSError):
                for xml in Path("/var/cache/libvirt/qemu/capabilities").glob("*.xml"):
                    shutil.copy2(xml, d / "cache/qemu/capabilities" / xml.name)
            self._probe_cpu = _probe_cpu(d / "cache/qemu/capabilities")
        real_hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
        (d / "hosts").write_text(f"{real_hosts.rstrip()}\n{self.address}\t{self.name}\n")

    def _setup_network(self) -> None:
        in_use = _ip("-o", "-4", "addr", "show", "to", f"{SUBNET}.{self.index}.0/24")
        stale = re.match(rf"\d+: {re.escape(VETH_PREFIX)}([a-z0-9-]+)[@ ]", in_use)
        if stale:  # a crashed run's host of another name on this index (if no one holds it)
            cleanup_stale(stale.group(1))
            in_use = _ip("-o", "-4", "addr", "show", "to", f"{SUBNET}.{self.index}.0/24")
        if in_use.strip():
            raise IsolatedHostError(f"{SUBNET}.{self.index}.0/24 is already in use: {in_use.strip()}")
        ns = self.netns
        _ip("netns", "add", ns)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.veth)
        _ip("link", "set", self.veth, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "route", "add", FLEET_NET, "via", self.gateway)
        # Forward what comes in on this veth only (to the other hosts' veths).
        Path(f"/proc/sys/net/ipv4/conf/{self.veth}/forwarding").write_text("1\n")

    def _start_holder(self) -> None:
        d = self.state_dir
        lines = [
            "set -eu",
            f"hostname {shlex.quote(self.name)}",
            # A sysfs of this network namespace (/sys/class/net), without the cgroup hierarchies.
            "umount -l /sys",
            "mount -t sysfs sysfs /sys",
            # Drop the copies of other hosts' netns mounts, which would keep them alive.
            "umount -l /run/netns 2>/dev/null || true",
            f"mount --bind {shlex.quote(str(d / 'hosts'))} /etc/hosts",
        ]
        for target, sub in BIND_DIRS.items():
            lines.append(f"mount --bind {shlex.quote(str(d / sub))} {target}")
        for target in RUN_DIRS:
            lines.append(f"mount -t tmpfs -o mode=0755 domus-fleet {target}")
        lines += ["echo ready", "exec sleep infinity"]
        for target in [*BIND_DIRS, *RUN_DIRS]:
            Path(target).mkdir(parents=True, exist_ok=True)  # mount points (normally all there)
        with open(d / "holder.log", "wb") as log:
            self._holder = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{self.netns}",
                    "--",
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation=private",
                    "--",
                    "sh",
                    "-c",
                    "\n".join(lines),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        assert self._holder.stdout is not None
        ready, _, _ = select.select([self._holder.stdout], [], [], 30)
        line = self._holder.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            raise IsolatedHostError(
                f"host {self.name}: setting up the namespaces failed: "
                f"{(d / 'holder.log').read_text(errors='replace').strip()}"
            )

    def _start_daemon(self, argv: list[str], socket: str, log_name: str, deadline: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIBVIRT_", "VIRSH_"))}
        with open(self.state_dir / log_name, "wb") as log:
            daemon = self.popen(
                argv,
                cwd="/",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._daemons.append(daemon)
        sock = self.inside_path(socket)
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise IsolatedHostError(
                    f"host {self.name}: {argv[0]} did not come up (exit status {daemon.poll()}): "
                    + self._logs_tail(log_name)
                )
            time.sleep(0.02)

    def _start_daemons(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._start_daemon(
            ["virtlogd", "--pid-file", "/run/libvirt/virtlogd.pid"],
            "/run/libvirt/virtlogd-sock",
            "virtlogd.out",
            deadline,
        )
        # The host CPU data that libvirtd reads (on start-up) must be identical to that in the
        # capabilities cache, or it probes again; it includes the x2APIC id of the CPU it runs on.
        # So libvirtd starts on the CPU the cache was made on, and may use them all once up.
        pin = [] if self._probe_cpu is None else ["taskset", "--cpu-list", str(self._probe_cpu)]
        self._start_daemon(
            [*pin, "libvirtd", "--pid-file", "/run/libvirt/libvirtd.pid"],
            "/run/libvirt/libvirt-sock",
            "libvirtd.out",
            deadline,
        )
        while True:  # the first call that needs QEMU's capabilities may probe them (seconds)
            try:
                self.virsh("version", timeout=max(1.0, deadline - time.monotonic()))
                if pin:
                    _unpin(self._daemons[-1].pid)
                return
            except (IsolatedHostError, subprocess.TimeoutExpired) as exc:
                if self._daemons[-1].poll() is not None or time.monotonic() > deadline:
                    raise IsolatedHostError(
                        f"host {self.name}: libvirtd not answering: {exc}; " + self._logs_tail("libvirtd.out")
                    ) from exc
                time.sleep(0.1)

    def _logs_tail(self, out_name: str) -> str:
        parts = []
        for path in [self.state_dir / out_name, self.state_dir / "log" / out_name.replace(".out", ".log")]:
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip()
                if text:
                    parts.append(f"{path}:\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(parts) or "(no log output)"


def start_isolated_host(
    name: str,
    index: int,
    workdir: Path,
    *,
    qemu_as_root: bool = True,
    seed_capabilities: bool = True,
    ready_timeout: float = 300.0,
) -> IsolatedHost:
    """Start host `name` on 10.231.<index>.0/24 with its state under `<workdir>/<name>/` (emptied
    first). Cleans up what a crashed run left under that name first. Needs root."""
    started = time.monotonic()
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"host name {name!r}: want [a-z][a-z0-9-]{{0,11}}")
    if not 1 <= index <= 254:
        raise ValueError(f"host index {index}: want 1..254")
    if os.geteuid() != 0:
        raise IsolatedHostError("isolated hosts need root")
    host = IsolatedHost(
        name=name,
        address=f"{SUBNET}.{index}.2",
        netns=NETNS_PREFIX + name,
        uri=URI,
        pool_dir=str(Path(workdir).resolve() / name / "pool"),
        index=index,
        gateway=f"{SUBNET}.{index}.1",
        veth=VETH_PREFIX + name,
        state_dir=Path(workdir).resolve() / name,
    )
    try:
        host._locks.append(_lock(f"name-{name}"))
        host._locks.append(_lock(f"index-{index}"))
        _remove_network(name)  # whatever a crashed run left behind
        host._prepare_dirs(qemu_as_root=qemu_as_root, seed_capabilities=seed_capabilities)
        host._setup_network()
        host._start_holder()
        host._start_daemons(ready_timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            host.stop()
        for fd in host._locks:
            os.close(fd)
        host._locks.clear()
        raise
    host.start_seconds = time.monotonic() - started
    return host


@contextlib.contextmanager
def isolated_hosts(
    count: int, workdir: Path, *, qemu_as_root: bool = True, seed_capabilities: bool = True
) -> Iterator[list[IsolatedHost]]:
    """Hosts h1..h<count> (indexes 1..count), all stopped on the way out."""
    hosts: list[IsolatedHost] = []
    try:
        for i in range(1, count + 1):
            hosts.append(
                start_isolated_host(
                    f"h{i}", i, workdir, qemu_as_root=qemu_as_root, seed_capabilities=seed_capabilities
                )
            )
        yield hosts
    finally:
        problems: list[str] = []
        for host in reversed(hosts):
            try:
                host.stop()
            except (IsolatedHostError, OSError) as exc:  # stop the others all the same
                problems.append(str(exc))
        if problems:
            raise IsolatedHostError("; ".join(problems))


def cleanup_stale(name: str) -> None:
    """Remove what a crashed run left of host `name` (refuses while a live process holds it)."""
    fd = _lock(f"name-{name}")
    try:
        _remove_network(name)
    finally:
        os.close(fd)


# --- helpers ---------------------------------------------------------------------------------


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise IsolatedHostError(f"ip {shlex.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _lock(key: str) -> int:
    """Hold an exclusive flock on LOCK_DIR/<key>.lock (released on close or when we die)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_DIR / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise IsolatedHostError(f"isolated host {key} is in use by a live process (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _netns_pids(netns: str) -> list[int]:
    """Pids of the processes in network namespace `netns` (as `ip netns pids`)."""
    try:
        target = os.stat(f"/run/netns/{netns}")
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone, or a zombie
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return pids


def _signal_all(netns: str, sig: signal.Signals, *, spare: set[int], timeout: float) -> list[int]:
    """Send `sig` to every process in `netns` but `spare` (once each, also to those that appear
    meanwhile), until they are gone or `timeout` passes; returns those left."""
    deadline = time.monotonic() + timeout
    sent: set[int] = set()
    while pids := [pid for pid in _netns_pids(netns) if pid not in spare]:
        if time.monotonic() > deadline:
            return pids
        for pid in pids:
            if pid not in sent:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                sent.add(pid)
        time.sleep(0.02)
    return []


def _remove_network(name: str) -> None:
    """SIGKILL every process in netns domus-<name>, then delete the veth and the netns."""
    netns, veth = NETNS_PREFIX + name, VETH_PREFIX + name
    if left := _signal_all(netns, signal.SIGKILL, spare=set(), timeout=KILL_TIMEOUT):
        raise IsolatedHostError(f"processes in {netns} survive SIGKILL: {left}")
    if Path(f"/sys/class/net/{veth}").exists():
        _ip("link", "del", veth)
    if Path(f"/run/netns/{netns}").exists():
        _ip("netns", "del", netns)


def _probe_cpu(cache_dir: Path) -> int | None:
    """The CPU (that we may use) whose x2APIC id is in the host CPU data of the cached QEMU
    capabilities (cpuid leaf 0x1f or 0xb, subleaf 0, edx; a leaf of zeros is left out)."""
    apic_id = None
    for xml in sorted(cache_dir.glob("*.xml")):
        text = xml.read_text(errors="replace")
        start, end = text.find("<cpudata"), text.find("</cpudata>")
        if start < 0 or end < start:
            continue
        cpudata = text[start:end]
        for leaf in ("0x0000001f", "0x0000000b"):
            match = re.search(
                rf"<cpuid eax_in='{leaf}' ecx_in='0x00000000' [^>]*edx='(0x[0-9a-f]+)'", cpudata
            )
            if match:
                apic_id = int(match.group(1), 16)
                break
        else:
            apic_id = 0
        break
    if apic_id is None:
        return None
    cpu = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            cpu = int(value)
        elif key == "apicid" and cpu is not None and int(value) == apic_id:
            return cpu if cpu in os.sched_getaffinity(0) else None
    return None


def _unpin(pid: int) -> None:
    """Let every thread of `pid` run on all the CPUs we may use."""
    cpus = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


def _scrub_libvirt_config(etc: Path) -> None:
    """No domains, pools, secrets or autostart of the real host in this copy of /etc/libvirt."""
    for pattern in [
        "qemu/*.xml",  # persistent domains
        "qemu/autostart/*",
        "qemu/networks/autostart/*",
        "storage/*.xml",  # storage pools
        "storage/autostart/*",
        "secrets/*.xml",
        "secrets/*.base64",
        "lxc/*.xml",
        "lxc/autostart/*",
        "libxl/*.xml",
        "libxl/autostart/*",
    ]:
        for path in etc.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _set_conf(path: Path, values: Mapping[str, str]) -> None:
    """Set `key = value` (values in libvirt's conf syntax) in a libvirt .conf file: drop the active
    assignments of those keys (a list may span lines), then append the new ones."""
    kept: list[str] = []
    in_list = False
    for line in path.read_text().splitlines():
        if in_list:
            in_list = "]" not in line
            continue
        match = re.match(r"\s*(\w+)\s*=(.*)", line)
        if match and match.group(1) in values:
            value = match.group(2).split("#", 1)[0]
            in_list = "[" in value and "]" not in value
            continue
        kept.append(line)
    kept += ["", "# domus isolated test host (tests/fleet/isolated.py)"]
    kept += [f"{key} = {value}" for key, value in values.items()]
    path.write_text("\n".join(kept) + "\n")


def _main(argv: list[str], out: IO[str]) -> int:
    if len(argv) < 2 or argv[0] != "cleanup":
        print("usage: python -m tests.fleet.isolated cleanup NAME...", file=out)
        return 2
    for name in argv[1:]:
        cleanup_stale(name)
        print(f"cleaned up {NETNS_PREFIX}{name}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:], sys.stdout))
