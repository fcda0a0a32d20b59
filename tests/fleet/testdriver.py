"""A fleet of agents on libvirt's test driver: one `python -m agent` process per fake host.

Each agent gets its own node document (https://libvirt.org/drvtest.html) with `domains`
domains, a `default` storage pool, a NAT network and a host bridge, its own secret file and port.
The test driver keeps everything in the agent's memory: no libvirtd, no guests, no disk images,
so hundreds of "hosts" fit on one machine (about one Python process' worth of memory each).

    with running_test_agents(200, 50, tmp_path) as agents:
        for agent in agents:
            host_register(name=agent.name, url=agent.url, secret=agent.secret)

Domain names and UUIDs are derived from the host and domain index, so a test can tell which
domains exist and which start out running without asking the agent (`node_domains`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lxml import etree

ROOT = Path(__file__).resolve().parents[2]
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"  # the test driver's own domain elements
_UUID_NS = uuid.UUID("6f0c1d0e-7d3a-4b8e-9a55-3c2f4d5e6a71")  # fixed: same names, same UUIDs
# libvirt's virDomainState numbers, for <test:runstate>
_RUNNING, _SHUTOFF = 1, 5
HOST_MEMORY_KIB = 64 * 1024 * 1024
DOMAIN_MEMORY_MIB = 64


def host_name(host_index: int) -> str:
    return f"h{host_index:03d}"


def domain_name(host_index: int, j: int) -> str:
    return f"{host_name(host_index)}-d{j:04d}"


def domain_uuid(host_index: int, j: int) -> uuid.UUID:
    return uuid.uuid5(_UUID_NS, domain_name(host_index, j))


def starts_running(j: int, running_fraction: float) -> bool:
    """Whether domain `j` is running in the node document: spread evenly, `running_fraction`
    of them in all (0.5: every other one)."""
    return math.floor((j + 1) * running_fraction) > math.floor(j * running_fraction)


@dataclass(frozen=True)
class NodeDomain:
    uuid: uuid.UUID
    name: str
    running: bool


def node_domains(host_index: int, domains: int, *, running_fraction: float = 0.5) -> list[NodeDomain]:
    """The domains `node_xml(host_index, domains, ...)` defines, in document order."""
    return [
        NodeDomain(
            domain_uuid(host_index, j), domain_name(host_index, j), starts_running(j, running_fraction)
        )
        for j in range(domains)
    ]


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _domain_element(parent: etree._Element, domain: NodeDomain, *, pool_path: str) -> None:
    dom = _sub(parent, "domain", type="test")
    _sub(dom, "name", domain.name)
    _sub(dom, "uuid", str(domain.uuid))
    _sub(dom, "memory", str(DOMAIN_MEMORY_MIB), unit="MiB")
    _sub(dom, "currentMemory", str(DOMAIN_MEMORY_MIB), unit="MiB")
    _sub(dom, "vcpu", "1")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64")
    _sub(os_el, "boot", dev="hd")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2")
    _sub(disk, "source", file=f"{pool_path}/{domain.name}.qcow2")
    _sub(disk, "target", dev="vda", bus="virtio")
    nic = _sub(devices, "interface", type="network")
    _sub(nic, "source", network="default")
    _sub(nic, "model", type="virtio")
    state = _SHUTOFF if not domain.running else _RUNNING
    _sub(dom, f"{{{TEST_NS}}}runstate", str(state))


def node_xml(
    host_index: int,
    domains: int,
    *,
    running_fraction: float = 0.5,
    pool_path: str = "/var/lib/libvirt/images",
) -> str:
    """A test-driver node document for fake host `host_index` with `domains` domains."""
    if not 0.0 <= running_fraction <= 1.0:
        raise ValueError(f"running_fraction must be within [0, 1], not {running_fraction}")
    node = etree.Element("node", nsmap={"test": TEST_NS})
    node.append(etree.Comment(f" Domus test fleet: host {host_name(host_index)}, {domains} domains "))
    cpu = _sub(node, "cpu")
    for tag, value in (
        ("mhz", "3000"),
        ("model", "x86_64"),
        ("active", "16"),
        ("nodes", "1"),
        ("sockets", "1"),
        ("cores", "8"),
        ("threads", "2"),
    ):
        _sub(cpu, tag, value)
    _sub(node, "memory", str(HOST_MEMORY_KIB))

    for domain in node_domains(host_index, domains, running_fraction=running_fraction):
        _domain_element(node, domain, pool_path=pool_path)

    network = _sub(node, "network")
    _sub(network, "name", "default")
    _sub(network, "uuid", str(uuid.uuid5(_UUID_NS, f"{host_name(host_index)}-net-default")))
    _sub(network, "forward", mode="nat")
    _sub(network, "bridge", name="virbr0", stp="on", delay="0")
    ip = _sub(network, "ip", address="192.168.122.1", netmask="255.255.255.0")
    dhcp = _sub(ip, "dhcp")
    _sub(dhcp, "range", start="192.168.122.2", end="192.168.122.254")

    bridge_if = _sub(node, "interface", type="bridge", name="br0")
    _sub(bridge_if, "start", mode="onboot")
    protocol = _sub(bridge_if, "protocol", family="ipv4")
    _sub(protocol, "dhcp")
    bridge = _sub(bridge_if, "bridge", stp="off", delay="0")
    port = _sub(bridge, "interface", type="ethernet", name="eth0")
    mac = bytes([0x52, 0x54, 0x00, *host_index.to_bytes(3, "big")])  # unique per host
    _sub(port, "mac", address=":".join(f"{b:02x}" for b in mac))

    pool = _sub(node, "pool", type="dir")
    _sub(pool, "name", "default")
    _sub(pool, "uuid", str(uuid.uuid5(_UUID_NS, f"{host_name(host_index)}-pool-default")))
    _sub(pool, "capacity", str(500 * 1024**3), unit="bytes")
    _sub(pool, "allocation", str(100 * 1024**3), unit="bytes")
    _sub(pool, "available", str(400 * 1024**3), unit="bytes")
    target = _sub(pool, "target")
    _sub(target, "path", pool_path)

    return etree.tostring(node, pretty_print=True, xml_declaration=True, encoding="UTF-8").decode()


# -- processes -------------------------------------------------------------------------------


@dataclass
class TestAgent:
    __test__: ClassVar[bool] = False  # not a pytest test class

    index: int
    name: str
    port: int
    secret: str
    node_path: Path
    secret_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    domains: list[NodeDomain] = field(default_factory=list)
    started_in_s: float = 0.0  # from spawn to the first healthy answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def uri(self) -> str:
        return f"test://{self.node_path}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def rss_bytes(self) -> int | None:
        """The process' resident set (VmRSS), or None once it has exited."""
        return rss_bytes(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class AgentStartError(RuntimeError):
    pass


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open at once, so none repeats)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for sock in held:
            sock.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/health", timeout=2) as resp:
            return resp.status == 200 and bool(json.loads(resp.read()).get("ok"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _spawn(
    index: int, domains: int, workdir: Path, port: int, *, running_fraction: float, log_level: str
) -> TestAgent:
    name = host_name(index)
    pool_path = workdir / "pool"
    node_path = workdir / f"{name}.xml"
    node_path.write_text(
        node_xml(index, domains, running_fraction=running_fraction, pool_path=str(pool_path))
    )
    secret = secrets.token_urlsafe(32)
    secret_path = workdir / f"{name}.secret"
    secret_path.write_text(secret)
    secret_path.chmod(0o600)
    log_path = workdir / f"{name}.log"
    argv = [
        *(sys.executable, "-m", "agent", "--uri", f"test://{node_path}"),
        *("--listen", "127.0.0.1", "--port", str(port), "--secret-file", str(secret_path)),
        *("--accel", "auto", "--pool-path", str(pool_path), "--log-level", log_level),
        # Its own key/pairing directory: never the machine's /var/lib/domus-agent.
        *("--state-dir", str(workdir / f"{name}.state")),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C on the terminal reaches only the caller, which stops us.
            start_new_session=True,
        )
    return TestAgent(
        index=index,
        name=name,
        port=port,
        secret=secret,
        node_path=node_path,
        secret_path=secret_path,
        log_path=log_path,
        proc=proc,
        domains=node_domains(index, domains, running_fraction=running_fraction),
    )


def start_test_agents(
    count: int,
    domains_each: int,
    workdir: Path,
    *,
    base_port: int | None = None,
    running_fraction: float = 0.5,
    parallel: int | None = None,
    first_index: int = 0,
    log_level: str = "INFO",
    timeout: float = 60.0,
) -> list[TestAgent]:
    """Start `count` agents (hosts `first_index`...), each on its own node document; return once
    every one answers /v1/health.

    Start-up is CPU-bound (about 0.5 CPU-second each: imports, then the test driver parsing its
    node document), so at most `parallel` agents are starting at any time, the next spawned as
    soon as one answers. The default, eight per CPU, keeps every core busy through the I/O gaps
    (on 2 cores: 200 agents in ~55 s, against ~70 s with two per CPU); more only adds memory.
    On any failure every agent started so far is stopped and AgentStartError says which one
    failed and why.
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pool").mkdir(exist_ok=True)
    parallel = parallel or max(4, 8 * (os.cpu_count() or 1))
    ports = [base_port + i for i in range(count)] if base_port is not None else free_ports(count)
    pending = list(range(count))
    starting: list[tuple[TestAgent, float]] = []
    ready: list[TestAgent] = []
    started: list[TestAgent] = []
    try:
        while pending or starting:
            while pending and len(starting) < parallel:
                i = pending.pop(0)
                agent = _spawn(
                    first_index + i,
                    domains_each,
                    workdir,
                    ports[i],
                    running_fraction=running_fraction,
                    log_level=log_level,
                )
                started.append(agent)
                starting.append((agent, time.monotonic()))
            still: list[tuple[TestAgent, float]] = []
            for agent, spawned_at in starting:
                if agent.proc.poll() is not None:
                    raise AgentStartError(
                        f"agent {agent.name} exited with {agent.proc.returncode}:\n{agent.log()[-3000:]}"
                    )
                if _healthy(agent.url):
                    agent.started_in_s = time.monotonic() - spawned_at
                    ready.append(agent)
                elif time.monotonic() - spawned_at > timeout:
                    raise AgentStartError(
                        f"agent {agent.name} did not answer within {timeout:.0f} s:\n{agent.log()[-3000:]}"
                    )
                else:
                    still.append((agent, spawned_at))
            starting = still
            if starting:
                time.sleep(0.02)
    except BaseException:
        stop_test_agents(started)
        raise
    ready.sort(key=lambda a: a.index)
    return ready


def stop_test_agents(agents: list[TestAgent], *, timeout: float = 10.0) -> None:
    """SIGTERM every agent, then SIGKILL those still there after `timeout` seconds."""
    for agent in agents:
        if agent.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                agent.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for agent in agents:
        try:
            agent.proc.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                agent.proc.kill()
            agent.proc.wait()


@contextlib.contextmanager
def running_test_agents(
    count: int,
    domains_each: int,
    workdir: Path,
    *,
    base_port: int | None = None,
    running_fraction: float = 0.5,
    parallel: int | None = None,
    first_index: int = 0,
    log_level: str = "INFO",
) -> Iterator[list[TestAgent]]:
    """`with running_test_agents(10, 10, tmp_path) as agents:` -- stopped however the block ends."""
    agents = start_test_agents(
        count,
        domains_each,
        workdir,
        base_port=base_port,
        running_fraction=running_fraction,
        parallel=parallel,
        first_index=first_index,
        log_level=log_level,
    )
    try:
        yield agents
    finally:
        stop_test_agents(agents)
