"""The two ways between the console benchmark's client and its VNC source (see bench/README.md):
the processes on them, started and stopped here, and consoles opened through them.

    Domus       client -> console (uvicorn, domains/consumers.py) -> agent (agent/websockets.py) -> source
    websockify  client -> websockify 0.13 (one forked process per connection)                 -> source

Also the launcher of two of those processes (started by bench/console_bench.py, not for use by hand):

    python -m bench.console_paths agent --vnc-target 127.0.0.1:PORT [domus-agent serve options]
    python -m bench.console_paths fakevnc --port-file FILE [--payload a5|random]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bench.output import log

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

    from agent.runtime import AgentRuntime
    from agent.vnc import GraphicsOpener
    from agent.websockets import GraphicsOpenerFor
    from bench.console_stack import ConsoleStack
    from tests.agent.fake_vnc import VncOverWebSocket

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000  # throughput is in MB/s (10^6 bytes), sizes in MiB
WEBSOCKIFY_VERSION = "0.13.0"
OPEN_AT_ONCE = 10  # consoles being opened at the same time (tickets, handshakes)


class BenchError(RuntimeError):
    pass


# -- the processes this module launches ------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


def fixed_vnc_target(host: str, port: int) -> GraphicsOpenerFor:
    """A VNC_OPENER that connects every domain's graphical console to one TCP server."""

    def opener_for(_runtime: AgentRuntime, _dom: Any) -> GraphicsOpener:
        async def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
            except OSError:
                sock.close()
                raise
            return sock

        return open_socket

    return opener_for


async def _probe(_request: web.Request) -> web.Response:
    from aiohttp import web as aiohttp_web

    from bench.heap_probe import reading

    return aiohttp_web.json_response(await asyncio.to_thread(reading))


def run_agent(argv: list[str]) -> None:
    """The real agent (`python -m agent`'s own main, on the test driver), except that every
    domain's VNC server is the one at --vnc-target: the test driver's domains have none."""
    parser = argparse.ArgumentParser(prog="console_paths agent")
    parser.add_argument("--vnc-target", type=_host_port, required=True, help="HOST:PORT of the VNC server")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="serve GET /_soak/probe: what the heap holds (bench/heap_probe.py)",
    )
    own, rest = parser.parse_known_args(argv)
    import agent.__main__ as agent_cli
    import agent.server
    from agent.websockets import VNC_OPENER

    make_app = agent.server.make_app

    def make_app_with_target(runtime: AgentRuntime) -> web.Application:
        app = make_app(runtime)
        app[VNC_OPENER] = fixed_vnc_target(*own.vnc_target)
        if own.probe:  # behind the agent's own authentication, as every route is
            app.router.add_get("/_soak/probe", _probe)
        return app

    # serve() looks make_app up in agent.server at call time: replacing it there is enough.
    agent.server.make_app = make_app_with_target
    agent_cli.main(rest)


def run_fake_vnc(argv: list[str]) -> None:
    """FakeVncServer on a free port, written to --port-file; runs until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="console_paths fakevnc")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--payload", choices=("a5", "random"), default="a5")
    args = parser.parse_args(argv)
    from tests.agent.fake_vnc import BULK_CHUNK, FakeVncServer

    class RandomBulkServer(FakeVncServer):
        """Bulk bytes no WebSocket compression can shrink (a random block repeated: deflate's
        window is at most 32 KiB, the block 64 KiB), as a real display's encoded updates are."""

        block = os.urandom(BULK_CHUNK)

        async def _bulk(self, writer: asyncio.StreamWriter, size: int) -> None:
            while size > 0:
                writer.write(self.block[: min(size, BULK_CHUNK)])
                size -= BULK_CHUNK
                await writer.drain()

    async def serve() -> None:
        server = RandomBulkServer() if args.payload == "random" else FakeVncServer()
        port = await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        written = args.port_file.with_suffix(".tmp")
        written.write_text(str(port))
        written.rename(args.port_file)  # whole or not at all: the benchmark polls for it
        await stop.wait()
        await server.close()

    asyncio.run(serve())


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    # websockify forks a process per connection into its process group: signal the group.
    whole_group: bool = False

    def log(self, tail: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""


class Children:
    """The processes the benchmark starts besides the console stack, each in its own session
    (a Ctrl-C reaches the benchmark only, which stops them)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.items: dict[str, Child] = {}

    def spawn(self, name: str, argv: Sequence[str], *, whole_group: bool = False) -> Child:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, proc, log_path, whole_group)
        self.items[name] = child
        return child

    def check_alive(self) -> None:
        for child in self.items.values():
            if child.proc.poll() is not None:
                raise BenchError(f"{child.name} exited with {child.proc.returncode}:\n{child.log()}")

    def pid(self, name: str) -> int:
        return self.items[name].proc.pid

    def stop(self) -> None:
        for child in self.items.values():
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in self.items.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(child, signal.SIGKILL)
                child.proc.wait()
            if child.whole_group:  # its per-connection children, should any be left
                self._signal(child, signal.SIGKILL)

    @staticmethod
    def _signal(child: Child, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if child.whole_group:
                os.killpg(child.proc.pid, sig)  # its own session: the group's id is its pid
            elif child.proc.poll() is None:
                child.proc.send_signal(sig)


def _wait_until(what: str, ready: Callable[[], bool], children: Children, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        children.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.1)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _agent_healthy(url: str) -> bool:
    # Only whether it answers: the console pins its certificate when it enrols it.
    context = ssl._create_unverified_context() if url.startswith("https://") else None  # noqa: S323
    try:
        with urllib.request.urlopen(url + "/v1/health", timeout=2, context=context) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_fake_vnc(children: Children, payload: str) -> int:
    port_file = children.workdir / "fakevnc.port"
    port_file.unlink(missing_ok=True)
    py = sys.executable
    children.spawn(
        "fakevnc",
        [py, "-m", "bench.console_paths", "fakevnc", "--port-file", str(port_file), "--payload", payload],
    )
    _wait_until("the fake VNC server", port_file.exists, children)
    return int(port_file.read_text())


def installed_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def start_websockify(children: Children, source_port: int) -> int:
    from bench.console_stack import free_port

    found = installed_version("websockify")
    if found is None:
        raise BenchError(
            f"websockify is not installed: .venv/bin/pip install websockify=={WEBSOCKIFY_VERSION}"
        )
    if found != WEBSOCKIFY_VERSION:
        log(f"warning: websockify {found}, not {WEBSOCKIFY_VERSION}")
    port = free_port()
    children.spawn(
        "websockify",
        [sys.executable, "-m", "websockify", f"127.0.0.1:{port}", f"127.0.0.1:{source_port}"],
        whole_group=True,
    )
    _wait_until("websockify", lambda: _accepts(port), children)
    return port


@dataclass
class BenchAgent:
    url: str
    secret: str
    domain_uuids: list[str]
    # With TLS: what `domus-agent init` printed, for the console to enrol it as a remote host.
    fingerprint: str = ""
    pairing_code: str = ""


def agent_secret(workdir: Path) -> tuple[str, Path]:
    """A fresh secret for an agent on loopback, and the file (mode 0600) it reads it from."""
    import secrets

    secret = secrets.token_urlsafe(32)
    path = workdir / "secret"
    path.write_text(secret)
    path.chmod(0o600)
    return secret, path


def start_agent(
    children: Children, source_port: int, domains: int, *, tls: bool = False, probe: bool = False
) -> BenchAgent:
    """The agent on a test-driver node with `domains` running domains: one console per domain,
    because only the viewer holding a domain's control may send input (agent/sharing.py), and
    a bulk request is input (a ClientCutText). With `tls`, it has a certificate first and serves
    HTTPS, as a remote host's agent does (it still listens on loopback)."""
    from bench.console_stack import free_port
    from tests.agent.conftest import agent_init
    from tests.fleet.testdriver import node_domains, node_xml

    workdir = children.workdir / "agent"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pool").mkdir(exist_ok=True)
    node_path = workdir / "node.xml"
    node_path.write_text(node_xml(0, domains, running_fraction=1.0, pool_path=str(workdir / "pool")))
    secret, secret_path = agent_secret(workdir)
    port = free_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    fingerprint, code = agent_init(workdir / "state", url) if tls else ("", "")
    children.spawn(
        "agent",
        [
            *(sys.executable, "-m", "bench.console_paths", "agent"),
            *("--vnc-target", f"127.0.0.1:{source_port}"),
            *("--uri", f"test://{node_path}", "--listen", "127.0.0.1", "--port", str(port)),
            *("--secret-file", str(secret_path), "--state-dir", str(workdir / "state")),
            *("--pool-path", str(workdir / "pool"), "--log-level", "WARNING"),
            *(("--probe",) if probe else ()),
        ],
    )
    _wait_until("the agent", lambda: _agent_healthy(url), children)
    uuids = [str(d.uuid) for d in node_domains(0, domains, running_fraction=1.0)]
    return BenchAgent(url, secret, uuids, fingerprint, code)


def domus_setup(stack: ConsoleStack, agent: BenchAgent, children: Children) -> tuple[str, list[int]]:
    """An Operator (site-wide) with an API token, the agent registered as a host, and its
    domains' rows as hostwatch writes them; returns the token and the domain ids."""
    from django.contrib.auth import get_user_model

    from bench.console_stack import register_hosts
    from console.access.models import Grant, Role
    from console.access.services import api_token_issue
    from domains.models import Domain
    from hosts.enrolment import host_enrol

    user = get_user_model().objects.create_user("bench-operator", password=None)
    Grant.objects.create(user=user, role=Role.objects.get(name="Operator"), scope=Grant.Scope.SITE)
    _token, key = api_token_issue(user=user, name="console-bench")
    if agent.pairing_code:  # as a remote host is added: pinned TLS and a per-host secret
        code, fingerprint = agent.pairing_code, agent.fingerprint
        host_enrol(name="bench-vnc", url=agent.url, pairing_code=code, fingerprint=fingerprint)
    else:
        register_hosts([("bench-vnc", agent.url, agent.secret)])

    def synced() -> bool:
        stack.check_alive()
        rows = Domain.objects.filter(uuid__in=agent.domain_uuids, state=Domain.State.RUNNING)
        return rows.count() == len(agent.domain_uuids)

    _wait_until("the domain rows (hostwatch's first inventory)", synced, children, timeout=120)
    ids = {
        str(u): pk for u, pk in Domain.objects.filter(uuid__in=agent.domain_uuids).values_list("uuid", "id")
    }
    return key, [ids[u] for u in agent.domain_uuids]


# -- the client ------------------------------------------------------------------------------


@dataclass
class Transfer:
    """One bulk transfer, server to client, as the client saw it (perf_counter seconds)."""

    size: int
    started: float
    first_byte: float
    ended: float
    frames: int
    max_gap_s: float  # the longest wait between two frames

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def mb_s(self) -> float:
        return self.size / MB / self.seconds if self.seconds > 0 else 0.0


class Console:
    """One open console, from the browser's side: a graphical one with its handshake done
    (bulk and round trips need one), or a serial one (no `vnc`)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, vnc: VncOverWebSocket | None) -> None:
        self.ws = ws
        self._vnc = vnc

    @property
    def vnc(self) -> VncOverWebSocket:
        if self._vnc is None:
            raise BenchError("a serial console has no VNC server to ask for bytes")
        return self._vnc

    async def bulk(self, size: int) -> Transfer:
        """Ask the server for `size` bytes (the fake server's `bulk N`) and read them all."""
        import aiohttp

        from tests.agent.fake_vnc import cut_text

        started = time.perf_counter()
        await self.ws.send_bytes(cut_text(f"bulk {size}".encode()))
        got = len(self.vnc.buffer)
        self.vnc.buffer.clear()
        first = last = 0.0
        frames = 0
        max_gap = 0.0
        while got < size:
            msg = await self.ws.receive()
            now = time.perf_counter()
            if msg.type == aiohttp.WSMsgType.BINARY:
                if not frames:
                    first = now
                else:
                    max_gap = max(max_gap, now - last)
                frames += 1
                got += len(msg.data)
                last = now
            elif msg.type != aiohttp.WSMsgType.TEXT:  # a text frame is a presence notice
                raise BenchError(f"console closed after {got} of {size} bytes: {msg.type} {msg.extra}")
        if got != size:
            raise BenchError(f"asked for {size} bytes, got {got}")
        return Transfer(size, started, first, last, frames, max_gap)

    async def round_trip(self, keysym: int) -> float:
        """One keystroke to the server and its echo back; seconds."""
        from tests.agent.fake_vnc import key_event

        event = key_event(keysym)
        started = time.perf_counter()
        await self.ws.send_bytes(event)
        echo = await self.vnc.read(len(event))
        took = time.perf_counter() - started
        if echo != event:
            raise BenchError(f"echo {echo!r} for {event!r}")
        return took

    async def close(self) -> None:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await self.ws.close()


class ProxyPath(Protocol):
    name: str

    async def connect(
        self, session: aiohttp.ClientSession, index: int, compress: int
    ) -> aiohttp.ClientWebSocketResponse:
        """A new WebSocket to console `index`; `compress` 15 offers permessage-deflate."""
        ...


class DomusPath:
    """A console ticket from the API, then the console's WebSocket, as a browser does (same
    Origin) but authenticated with an API token instead of a session."""

    name = "Domus"

    def __init__(
        self, url: str, token: str, domain_ids: Sequence[int], *, kind: str = "vnc", mode: str = "interact"
    ) -> None:
        self.url = url
        self.auth = {"Authorization": f"Token {token}"}
        self.domain_ids = list(domain_ids)
        self.kind = kind  # "vnc", or "serial" (bench/console_serial.py)
        self.mode = mode

    async def connect(
        self, session: aiohttp.ClientSession, index: int, compress: int
    ) -> aiohttp.ClientWebSocketResponse:
        domain_id = self.domain_ids[index % len(self.domain_ids)]
        async with session.post(
            f"{self.url}/api/v1/domains/{domain_id}/console-tickets/",
            json={"kind": self.kind, "mode": self.mode},
            headers=self.auth,
        ) as resp:
            body = await resp.json()
            if resp.status != 201:
                raise BenchError(f"console ticket for domain {domain_id}: {resp.status} {body}")
        ws_url = self.url.replace("http", "ws", 1) + body["url"]
        headers = {"Origin": self.url, **self.auth}
        return await session.ws_connect(ws_url, headers=headers, compress=compress)


class WebsockifyPath:
    name = "websockify"

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    async def connect(
        self, session: aiohttp.ClientSession, index: int, compress: int
    ) -> aiohttp.ClientWebSocketResponse:
        ws_url = self.url.replace("http", "ws", 1) + "/"
        return await session.ws_connect(ws_url, headers={"Origin": self.url}, compress=compress)


async def open_console(
    path: ProxyPath, session: aiohttp.ClientSession, index: int, *, compress: int = 0
) -> Console:
    from tests.agent.fake_vnc import VncOverWebSocket

    async with asyncio.timeout(30):
        ws = await path.connect(session, index, compress)
        if getattr(path, "kind", "vnc") == "serial":
            return await _serial_console(path, ws, index)
        vnc = VncOverWebSocket(ws)
        try:
            await vnc.handshake()
        except (AssertionError, ConnectionError) as err:
            await ws.close()
            raise BenchError(f"{path.name}: console {index}: VNC handshake failed: {err!r}") from err
    return Console(ws, vnc)


async def _serial_console(path: ProxyPath, ws: aiohttp.ClientWebSocketResponse, index: int) -> Console:
    """A serial console is open once the agent has told it who watches (after the history)."""
    import aiohttp

    while (msg := await ws.receive()).type == aiohttp.WSMsgType.BINARY:
        pass  # what the guest printed before this viewer came
    if msg.type != aiohttp.WSMsgType.TEXT or '"presence"' not in msg.data:
        await ws.close()
        raise BenchError(f"{path.name}: serial console {index}: {msg.type} {msg.data!r} {msg.extra!r}")
    return Console(ws, None)


async def open_consoles(
    path: ProxyPath, session: aiohttp.ClientSession, count: int, first: int = 0
) -> list[Console]:
    """`count` consoles (indexes first...), at most OPEN_AT_ONCE being opened at a time."""
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    opened: list[Console] = []

    async def one(index: int) -> None:
        async with gate:
            opened.append(await open_console(path, session, index))

    results = await asyncio.gather(*(one(first + i) for i in range(count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        await close_consoles(opened)
        raise BenchError(f"{path.name}: {len(failed)} of {count} consoles did not open: {failed[0]!r}")
    return opened


async def close_consoles(consoles: Sequence[Console]) -> None:
    await asyncio.gather(*(c.close() for c in consoles))


# -- launcher ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    launchers = {"agent": run_agent, "fakevnc": run_fake_vnc}
    if not argv or argv[0] not in launchers:
        print(__doc__, file=sys.stderr)
        return 2
    launchers[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
