"""Network installs cannot be turned against the host: real HTTP servers, real lookups, the real check.

The agent refuses loopback, link-local, this host's own addresses and the ranges it is told to
refuse, for the URL and for every redirect, after resolving names, and connects to the address
it checked. A refused destination is never contacted (so errors cannot probe ports), no error
carries a response's body, and size and time are capped.

An "allowed" server needs an address that passes the check: the servers here listen on
127.0.0.1, which the tests allow with the documented setting (`--netinstall-allow 127.0.0.1/32`);
127.0.0.2 (loopback too, not allowed) stands for what must stay out of reach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent import netinstall
from agent.__main__ import netinstall_policy, parse_args
from agent.errors import InstallSourceRefused, InvalidSpec
from agent.netinstall import NetinstallPolicy, fetch_installer
from agent.protocol import DomainSpec

KERNEL = "/images/pxeboot/vmlinuz"
INITRD = "/images/pxeboot/initrd.img"
SECRET = b"SECRET-BODY-OF-A-SERVICE"
MIB = 1024**2


# -- a scriptable HTTP server --------------------------------------------------------------------
@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    declared_length: int | None = None  # the Content-Length sent; None: the body's
    close_delimited: bool = False  # no Content-Length: the body ends with the connection
    stall_s: float = 0.0  # a pause after the headers
    trickle_s: float = 0.0  # a pause before each byte of the body
    hang_s: float = 0.0  # a pause after the body, before closing


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        route = self.server.routes.get(self.path, Route(status=404, body=b"no such file"))
        self.send_response(route.status, route.reason)
        for name, value in route.headers.items():
            self.send_header(name, value)
        if not route.close_delimited:
            length = len(route.body) if route.declared_length is None else route.declared_length
            self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            self.wfile.flush()
            time.sleep(route.stall_s)
            if route.trickle_s:
                for byte in route.body:
                    time.sleep(route.trickle_s)
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            else:
                self.wfile.write(route.body)
            self.wfile.flush()
            time.sleep(route.hang_s)
        except OSError:
            pass  # the agent hung up, as it should have

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    block_on_close = False  # a stalled handler must not hold up the test's end

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.routes: dict[str, Route] = {}
        self.seen: list[str] = []
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"


@contextmanager
def serve(host: str = "127.0.0.1", port: int = 0) -> Iterator[Server]:
    server = Server(host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def tree(server: Server, kernel: bytes = b"K" * 1000, initrd: bytes = b"I" * 3000) -> str:
    """Serve an installer tree (RHEL layout); returns its URL."""
    server.routes[KERNEL] = Route(body=kernel)
    server.routes[INITRD] = Route(body=initrd)
    return server.url()


# -- helpers -------------------------------------------------------------------------------------
def policy_from(*argv: str, environ: dict[str, str] | None = None, **fast: Any) -> NetinstallPolicy:
    """The policy the agent builds from these options and environment, with short timeouts."""
    policy = netinstall_policy(parse_args(["serve", *argv]), environ or {})
    timeouts: dict[str, Any] = {"connect_timeout_s": 2.0, "idle_timeout_s": 2.0, "timeout_s": 20.0}
    return dataclasses.replace(policy, **(timeouts | fast))


def allowing_127_0_0_1(**fast: Any) -> NetinstallPolicy:
    return policy_from("--netinstall-allow", "127.0.0.1/32", **fast)


def spec_for(url: str) -> DomainSpec:
    return DomainSpec.model_validate(
        {
            "uuid": uuid.uuid4(),
            "name": "ssrf",
            "disks": [{"size_gib": 1}],
            "boot": {"kind": "url", "url": url},
        }
    )


async def fetch_error(
    url: str,
    pool: Path,
    policy: NetinstallPolicy | None = None,
    *,
    kind: type[InvalidSpec] = InstallSourceRefused,
) -> str:
    """The error of fetching `url`'s tree (bounded in time: a missing check must not hang);
    `kind` InstallSourceRefused for a destination refused, InvalidSpec for a fetch that failed."""
    with pytest.raises(kind) as caught:
        async with asyncio.timeout(15):
            await fetch_installer(spec_for(url), str(pool), policy=policy or policy_from())
    return caught.value.detail


def leftovers(pool: Path) -> list[str]:
    return sorted(p.name for p in pool.rglob("*") if p.is_file())


def own_addresses() -> list[str]:
    """This host's global addresses, as iproute2 lists them (not how the agent reads them)."""
    try:
        out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [
        info["local"]
        for link in json.loads(out)
        for info in link.get("addr_info", [])
        if info.get("scope") == "global" and not ipaddress.ip_address(info["local"]).is_loopback
    ]


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return tmp_path / "pool"


# -- the destination check -------------------------------------------------------------------
async def test_a_loopback_server_is_refused_and_never_contacted(pool: Path) -> None:
    with serve() as server:
        server.routes[KERNEL] = Route(body=SECRET)
        error = await fetch_error(server.url(), pool)
        assert error == (
            f"boot.kernel: refused to fetch {server.url(KERNEL)}: 127.0.0.1 is a loopback address"
        )
        assert server.seen == []
    assert leftovers(pool) == []


@pytest.mark.parametrize(
    ("host", "resolves_to"),
    [
        ("localhost", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # the legacy short form
        ("2130706433", "127.0.0.1"),  # 127.0.0.1 as one number
    ],
)
async def test_names_are_checked_after_resolution(pool: Path, host: str, resolves_to: str) -> None:
    with serve() as server:
        tree(server)
        url = f"http://{host}:{server.port}/"
        error = await fetch_error(url, pool)
        assert f"{host} resolves to {resolves_to}, a loopback address" in error
        assert server.seen == []


async def test_an_ipv4_address_in_ipv6_form_is_checked_as_ipv4(pool: Path) -> None:
    with serve() as server:
        tree(server)
        error = await fetch_error(f"http://[::ffff:127.0.0.1]:{server.port}/", pool)
        assert "is the IPv6 form of 127.0.0.1, a loopback address" in error
        assert server.seen == []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/", "http://[fe80::1]/os/"])
async def test_link_local_addresses_are_refused(pool: Path, url: str) -> None:
    error = await fetch_error(url, pool, policy_from(connect_timeout_s=1.0))
    assert error.endswith("is a link-local address")


async def test_this_hosts_own_addresses_are_refused(pool: Path) -> None:
    addresses = own_addresses()
    if not addresses:
        pytest.skip("this machine has no global address but loopback")
    for address in addresses:
        with serve(address) as server:
            tree(server)
            error = await fetch_error(server.url(), pool)
            assert error.endswith(f"{address} is one of this host's own addresses"), error
            assert server.seen == []


async def test_without_this_hosts_addresses_nothing_is_fetched(
    pool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    addresses = [a for a in own_addresses() if ":" not in a]
    if not addresses:
        pytest.skip("this machine has no global IPv4 address")
    monkeypatch.setattr(netinstall, "FIB_TRIE", "/nonexistent/fib_trie")
    with serve(addresses[0]) as server:
        tree(server)
        error = await fetch_error(server.url(), pool)
        assert "network installs are refused: cannot read this host's addresses" in error
        assert server.seen == []


async def test_configured_ranges_are_refused(pool: Path) -> None:
    policy = policy_from(
        "--netinstall-deny",
        "203.0.113.0/24",
        environ={"DOMUS_AGENT_NETINSTALL_DENY": "198.51.100.0/24, 192.0.2.128/25"},
        connect_timeout_s=1.0,
    )
    for address in ("203.0.113.7", "198.51.100.9"):
        error = await fetch_error(f"http://{address}/os/", pool, policy)
        assert error.endswith(f"{address} is an address in a range this agent refuses (--netinstall-deny)")


async def test_a_name_that_does_not_resolve_is_a_plain_failure(pool: Path) -> None:
    with pytest.raises(InvalidSpec) as caught:
        await fetch_installer(spec_for("http://no-such-host.invalid/os/"), str(pool), policy=policy_from())
    assert type(caught.value) is InvalidSpec  # not a refusal: there was nothing to refuse
    assert caught.value.detail.startswith(
        "boot.kernel: cannot fetch http://no-such-host.invalid/os/images/pxeboot/vmlinuz: "
        "cannot resolve no-such-host.invalid"
    )


def test_a_bad_range_in_the_settings_stops_the_agent() -> None:
    with pytest.raises(SystemExit, match=r"DOMUS_AGENT_NETINSTALL_DENY: 'mgmt' is not an address range"):
        netinstall_policy(parse_args(["serve"]), {"DOMUS_AGENT_NETINSTALL_DENY": "10.0.0.0/8,mgmt"})


async def test_an_allowed_server_serves_the_installer(pool: Path) -> None:
    with serve() as server:
        url = tree(server)
        kernel, initrd = await fetch_installer(spec_for(url), str(pool), policy=allowing_127_0_0_1())
        assert Path(kernel).read_bytes() == b"K" * 1000 and Path(initrd).read_bytes() == b"I" * 3000


async def test_a_name_is_refused_if_any_of_its_addresses_is(
    pool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve() as server:
        tree(server)
        fake_dns(monkeypatch, {"mirror.test": [["127.0.0.1", "127.0.0.2"]]})
        error = await fetch_error(f"http://mirror.test:{server.port}/", pool, allowing_127_0_0_1())
        assert error.endswith("mirror.test resolves to 127.0.0.2, a loopback address")
        assert server.seen == []


async def test_the_connection_goes_to_the_address_that_was_checked(
    pool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers an allowed address to the check, a refused one after."""
    with serve() as mirror, serve("127.0.0.2", mirror.port) as service:
        tree(mirror)
        service.routes[KERNEL] = Route(body=SECRET)
        spec = spec_for(f"http://mirror.test:{mirror.port}/")
        kernel, initrd = netinstall.installer_paths(str(pool), spec)
        Path(initrd).parent.mkdir(parents=True)
        Path(initrd).write_bytes(b"fetched before")  # one lookup, the kernel's
        fake_dns(monkeypatch, {"mirror.test": [["127.0.0.1"], ["127.0.0.2"]]})
        await fetch_installer(spec, str(pool), policy=allowing_127_0_0_1())
        assert Path(kernel).read_bytes() == b"K" * 1000
        assert service.seen == []


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> None:
    """Answer lookups of these names in turn (the last answer again once they run out); other
    names go to the real resolver. Only DNS is faked: the check runs on what it answers."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    asked: dict[str, int] = {}

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return await real(host, port, *args, **kwargs)
        turn = asked[host] = asked.get(host, -1) + 1
        addresses = answers[host][min(turn, len(answers[host]) - 1)]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port)))
            for a in addresses
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_a_proxy_from_the_environment_is_not_used(pool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would resolve and connect on the agent's behalf, past the check."""
    with serve() as proxy:
        proxy.routes["http://198.51.100.7/os/images/pxeboot/vmlinuz"] = Route(body=b"K")
        monkeypatch.setenv("http_proxy", proxy.url())
        monkeypatch.setenv("HTTP_PROXY", proxy.url())
        # 198.51.100.7 (documentation only) answers nothing useful: the fetch fails, but not by proxy.
        await fetch_error(
            "http://198.51.100.7/os/", pool, allowing_127_0_0_1(connect_timeout_s=1.0), kind=InvalidSpec
        )
        assert proxy.seen == []


# -- redirects -----------------------------------------------------------------------------------
async def test_a_redirect_to_loopback_is_refused_at_the_hop(pool: Path) -> None:
    with serve() as mirror, serve("127.0.0.2") as service:
        service.routes["/v1/health"] = Route(body=SECRET)
        target = service.url("/v1/health")
        mirror.routes[KERNEL] = Route(status=302, headers={"Location": target}, body=b"moved")
        error = await fetch_error(mirror.url(), pool, allowing_127_0_0_1())
        assert error == (f"boot.kernel: refused the redirect to {target}: 127.0.0.2 is a loopback address")
        assert mirror.seen == [KERNEL] and service.seen == []
        assert SECRET.decode() not in error
    assert leftovers(pool) == []


async def test_redirects_within_allowed_servers_are_followed(pool: Path) -> None:
    with serve() as mirror:
        tree(mirror)
        mirror.routes["/old" + KERNEL] = Route(status=301, headers={"Location": KERNEL})
        mirror.routes["/old" + INITRD] = Route(status=308, headers={"Location": "../../.." + INITRD})
        kernel, initrd = await fetch_installer(
            spec_for(mirror.url("/old/")), str(pool), policy=allowing_127_0_0_1()
        )
        assert Path(kernel).read_bytes() == b"K" * 1000 and Path(initrd).read_bytes() == b"I" * 3000
        assert mirror.seen == ["/old" + KERNEL, KERNEL, "/old" + INITRD, INITRD]


async def test_a_redirect_to_another_scheme_is_refused(pool: Path) -> None:
    with serve() as mirror:
        mirror.routes[KERNEL] = Route(status=307, headers={"Location": "file:///etc/shadow"})
        error = await fetch_error(mirror.url(), pool, allowing_127_0_0_1())
        assert error == (
            "boot.kernel: refused the redirect to file:///etc/shadow: only http:// and https:// are fetched"
        )


async def test_redirects_are_limited(pool: Path) -> None:
    with serve() as mirror:
        mirror.routes[KERNEL] = Route(status=302, headers={"Location": KERNEL})
        error = await fetch_error(mirror.url(), pool, allowing_127_0_0_1(max_redirects=3), kind=InvalidSpec)
        assert error == f"boot.kernel: more than 3 redirects from {mirror.url(KERNEL)}"
        assert len(mirror.seen) == 4


# -- what errors say -------------------------------------------------------------------------------
async def test_an_error_never_carries_what_the_server_answered(pool: Path) -> None:
    with serve() as mirror:
        mirror.routes[KERNEL] = Route(
            status=401,
            reason="SECRET-REASON",
            body=SECRET,
            headers={"WWW-Authenticate": 'Basic realm="SECRET-REALM"'},
        )
        error = await fetch_error(mirror.url(), pool, allowing_127_0_0_1(), kind=InvalidSpec)
        assert error == f"boot.kernel: {mirror.url(KERNEL)} answered HTTP 401"


async def test_a_refused_port_reads_the_same_open_or_closed(pool: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with serve() as server:
        tree(server)
        open_error = await fetch_error(server.url(), pool)
    closed_error = await fetch_error(f"http://127.0.0.1:{closed}/", pool)
    assert open_error.replace(str(server.port), "PORT") == closed_error.replace(str(closed), "PORT")
    assert server.seen == []


# -- size and time -------------------------------------------------------------------------------
async def test_a_body_larger_than_the_cap_is_cut_off_and_removed(pool: Path) -> None:
    with serve() as mirror:
        tree(mirror)
        mirror.routes[KERNEL] = Route(body=b"K" * (3 * MIB), close_delimited=True)
        error = await fetch_error(
            mirror.url(), pool, allowing_127_0_0_1(kernel_max_bytes=MIB), kind=InvalidSpec
        )
        assert error == f"boot.kernel: {mirror.url(KERNEL)} is larger than 1 MiB, the limit for this file"
    assert leftovers(pool) == []  # no vmlinuz, no vmlinuz.part


async def test_a_declared_size_over_the_cap_is_refused_before_reading(pool: Path) -> None:
    with serve() as mirror:
        # It claims 10 GiB, sends a little and then nothing: only the header tells.
        mirror.routes[KERNEL] = Route(body=b"K" * 100, declared_length=10 * 1024 * MIB, hang_s=30)
        error = await fetch_error(mirror.url(), pool, allowing_127_0_0_1(), kind=InvalidSpec)
        assert error == f"boot.kernel: {mirror.url(KERNEL)} is larger than 256 MiB, the limit for this file"
    assert leftovers(pool) == []


async def test_the_initrd_has_its_own_cap(pool: Path) -> None:
    with serve() as mirror:
        tree(mirror, initrd=b"I" * (2 * MIB))
        error = await fetch_error(
            mirror.url(), pool, allowing_127_0_0_1(initrd_max_bytes=MIB), kind=InvalidSpec
        )
        assert error.startswith("boot.initrd: ") and "is larger than 1 MiB" in error
    assert leftovers(pool) == ["vmlinuz"]  # the kernel is whole and kept for a retry


async def test_a_stalled_server_times_out(pool: Path) -> None:
    with serve() as mirror:
        mirror.routes[KERNEL] = Route(body=b"K" * 100, stall_s=8)
        error = await fetch_error(
            mirror.url(), pool, allowing_127_0_0_1(idle_timeout_s=1.0), kind=InvalidSpec
        )
        assert error == f"boot.kernel: cannot fetch {mirror.url(KERNEL)}: the server sent nothing for 1 s"
    assert leftovers(pool) == []


async def test_a_trickling_server_hits_the_overall_limit(pool: Path) -> None:
    with serve() as mirror:
        mirror.routes[KERNEL] = Route(body=b"K" * 200, trickle_s=0.1)
        error = await fetch_error(mirror.url(), pool, allowing_127_0_0_1(timeout_s=1.5), kind=InvalidSpec)
        assert error == (
            f"boot.kernel: fetching {mirror.url(KERNEL)} did not finish within 1.5 s, "
            "the limit for a network install"
        )
    assert leftovers(pool) == []


# -- reading this host's addresses ---------------------------------------------------------------
FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.1.0.0/16 2 0 2
        |-- 10.1.0.0
           /16 link UNICAST
        |-- 10.1.2.3
           /32 host LOCAL
        |-- 10.1.2.4
           /32 host LOCAL
        |-- 10.1.255.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 172.30.0.0/16 2 0 2
        |-- 172.30.0.0
           /16 host LOCAL
"""
IF_INET6 = """\
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
"""


def test_the_kernels_local_routes_are_this_hosts_addresses() -> None:
    assert netinstall.parse_fib_trie(FIB_TRIE) == {
        ipaddress.IPv4Network(n) for n in ("10.1.2.3/32", "10.1.2.4/32", "127.0.0.0/8", "127.0.0.1/32")
    } | {ipaddress.IPv4Network("172.30.0.0/16")}  # a secondary address; an "AnyIP" range
    assert netinstall.parse_if_inet6(IF_INET6) == {
        ipaddress.IPv6Network(n) for n in ("fe80::fc:ff:fe00:1/128", "::1/128", "fd00::2/128")
    }
