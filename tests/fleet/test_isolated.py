"""Proof that tests/fleet/isolated.py gives independent libvirt hosts on this one machine: a guest of
the same name on two of them, each host seeing only its own, the root libvirtd neither, each host
reachable on its own address, and nothing left behind afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.fleet.isolated import (
    NETNS_PREFIX,
    URI,
    VETH_PREFIX,
    IsolatedHost,
    IsolatedHostError,
    isolated_hosts,
    start_isolated_host,
)

REPO = Path(__file__).resolve().parents[2]
GUEST = Path(os.environ.get("DOMUS_GUEST_DIR", REPO / ".cache" / "guest"))
PREFIX = "domus-test-fleet-"
HTTP_PORT = 8000


def _unusable() -> str | None:
    if os.geteuid() != 0:
        return "isolated hosts need root"
    for tool in ("ip", "nsenter", "unshare", "libvirtd", "virtlogd", "virsh"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.skipif(_unusable() is not None, reason=str(_unusable())),
]

needs_guest = pytest.mark.skipif(
    not (GUEST / "vmlinuz").exists() or not (GUEST / "initrd.img").exists(),
    reason="test guest not built: run tests/guest/build.sh (.cache/guest/vmlinuz, initrd.img)",
)


def _domain_xml(name: str, pool_dir: str, console_log: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{pool_dir}/vmlinuz</kernel>
    <initrd>{pool_dir}/initrd.img</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <serial type='pty'><log file='{console_log}' append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


def _define_and_start(host: IsolatedHost, name: str) -> Path:
    """Define and start the test guest `name` on `host`; returns its console log (root ns path)."""
    for file in ("vmlinuz", "initrd.img"):
        shutil.copyfile(GUEST / file, Path(host.pool_dir) / file)
    console_log = f"/var/log/libvirt/qemu/{name}-console.log"  # the same path on every host
    xml = host.state_dir / f"{name}.xml"
    xml.write_text(_domain_xml(name, host.pool_dir, console_log))
    host.virsh("define", str(xml))
    host.virsh("start", name)
    return host.state_dir / "log" / "qemu" / f"{name}-console.log"  # where it is from the root ns


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _names(listing: str) -> list[str]:
    return [line.strip() for line in listing.splitlines() if line.strip()]


def _qemu_pids(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if f"guest={name},".encode() in cmdline:
                pids.append(int(entry))
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _root_daemon_pids() -> set[int]:
    """The libvirtd and virtlogd of the root network namespace (ours)."""
    ours = os.stat("/proc/self/ns/net")
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                netns = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if comm in ("libvirtd", "virtlogd") and (netns.st_dev, netns.st_ino) == (
                ours.st_dev,
                ours.st_ino,
            ):
                pids.add(int(entry))
    return pids


def _root_virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, check=True, timeout=300
    ).stdout


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _assert_gone(names: list[str], guest: str | None = None) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    for name in names:
        assert NETNS_PREFIX + name not in netns.split(), netns
        assert not Path(f"/sys/class/net/{VETH_PREFIX}{name}").exists()
        assert not Path(f"/run/netns/{NETNS_PREFIX}{name}").exists()
    if guest is not None:
        assert _qemu_pids(guest) == []


@needs_guest
def test_two_hosts_run_guests_of_the_same_name(tmp_path: Path) -> None:
    root_daemons = _root_daemon_pids()
    inside: set[int] = set()
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    hosts: list[IsolatedHost] = []
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for index in (1, 2):
            hosts.append(start_isolated_host(f"h{index}", index, tmp_path))
        h1, h2 = hosts
        assert (h1.address, h2.address) == ("10.231.1.2", "10.231.2.2")

        logs = [_define_and_start(host, name) for host in hosts]
        for host in hosts:
            assert _names(host.virsh("list", "--all", "--name")) == [name]
            assert host.run(["hostname"], capture_output=True, text=True).stdout.strip() == host.name
        assert h1.virsh("domuuid", name) != h2.virsh("domuuid", name)
        assert name not in _names(_root_virsh("list", "--all", "--name"))
        # Two QEMUs, one in each host's namespaces.
        qemus = _qemu_pids(name)
        assert len(qemus) == 2
        assert len(set(qemus) & set(h1.pids())) == 1 and len(set(qemus) & set(h2.pids())) == 1
        # Both guests really boot (serial console logged by each host's own virtlogd).
        for log in logs:
            _wait_for(partial(_booted, log), timeout=240, what=f"the guest to boot ({log})")

        # Each address reaches its own host from the root namespace, and hosts reach each other.
        for host in hosts:
            www = host.state_dir / "www"
            www.mkdir()
            (www / "whoami").write_text(host.name)
            servers.append(
                host.popen(
                    [sys.executable, "-m", "http.server", "--bind", host.address, str(HTTP_PORT)],
                    cwd=www,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for host in hosts:
            url = f"http://{host.address}:{HTTP_PORT}/whoami"
            _wait_for(partial(_serving, url), timeout=30, what=url)
            assert _fetch(url) == host.name
        fetch = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode())"
        peer = h1.run(
            [sys.executable, "-c", fetch, f"http://{h2.address}:{HTTP_PORT}/whoami"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert peer.stdout.strip() == "h2", peer.stderr
        # Each host's /run/libvirt is its own (a tmpfs each, so compare the devices).
        sockets = [h.inside_path("/run/libvirt/libvirt-sock").stat() for h in hosts]
        sockets.append(Path("/run/libvirt/libvirt-sock").stat())
        assert len({(st.st_dev, st.st_ino) for st in sockets}) == 3
    finally:
        for host in reversed(hosts):
            inside |= set(host.pids())
            host.stop()
        for server in servers:
            server.wait(10)  # killed by stop(): reap it
    for host in hosts:
        print(
            f"{host.name}: start {host.start_seconds:.2f}s, stop (with a running guest) {host.stop_seconds:.2f}s"
        )
    _assert_gone(["h1", "h2"], guest=name)
    assert len(inside) >= 2 * 5  # holder, virtlogd, libvirtd, qemu, http.server on each
    assert [pid for pid in inside if _alive(pid)] == []
    assert _root_daemon_pids() == root_daemons  # the root libvirtd and virtlogd untouched
    _root_virsh("version")


@needs_guest
def test_a_crashed_run_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    crashed = start_isolated_host("h1", 1, tmp_path / "crashed")
    _define_and_start(crashed, name)
    stale = crashed.pids()
    assert len(_qemu_pids(name)) == 1
    # What a killed test run leaves: every process running, the locks released (by its death).
    for fd in crashed._locks:
        os.close(fd)
    crashed._locks.clear()

    with isolated_hosts(2, tmp_path / "next") as (h1, h2):
        assert _qemu_pids(name) == []
        assert [pid for pid in stale if _alive(pid)] == []
        assert _names(h1.virsh("list", "--all", "--name")) == []
        assert h2.virsh("version")
    _assert_gone(["h1", "h2"], guest=name)
    crashed.stop()  # a no-op by now: must not touch anything
    for process in [crashed._holder, *crashed._daemons]:
        if process is not None:
            process.wait(10)


def test_a_live_host_is_not_taken_over(tmp_path: Path) -> None:
    with start_isolated_host("h1", 1, tmp_path / "a") as h1:
        with pytest.raises(IsolatedHostError, match="in use"):
            start_isolated_host("h1", 3, tmp_path / "b")
        with pytest.raises(IsolatedHostError, match="in use"):
            start_isolated_host("h3", 1, tmp_path / "c")
        assert h1.virsh("version")  # still alive
    _assert_gone(["h1", "h3"])


def _serving(url: str) -> bool:
    try:
        _fetch(url)
    except OSError:
        return False
    return True


def _booted(console_log: Path) -> bool:
    return console_log.exists() and b"DOMUS-TEST-GUEST READY" in console_log.read_bytes()
