"""Network installs: fetch an installer tree's kernel and initrd into the default pool.

The files go to `<default pool>/.domus-install/<uuid>/`, inside a pool so the usual path checks
accept them, and are removed with the domain. A fetch is idempotent: a retried define reuses
complete files (written to a temporary name and renamed only once whole).

The agent runs as root next to services that trust this host (its own API on loopback,
libvirt's, a console in the embedded default, a cloud's metadata service), and the URL comes
from a console user: without care a network install is a way to make the host fetch from those
and keep the answer in a pool. So every hop (the URL, then each redirect, followed here and not
by aiohttp) is checked before anything connects: its name is resolved once, every address it
resolves to must pass `refusal`, and the connection goes to exactly those addresses (a pinned
resolver: no second DNS answer, so no DNS rebinding). Refused destinations are never contacted,
so an error cannot tell whether a port there was open; no error ever carries a response's body.
Size and time are capped per file and per install.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from agent.errors import InstallSourceRefused, InvalidSpec
from agent.protocol import DomainSpec, NetworkInstall

log = logging.getLogger(__name__)

INSTALL_DIR = ".domus-install"
MIB = 1024**2
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# "This network": Linux connects 0.0.0.0 (and, since 5.3, other 0/8 addresses) to this host.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# NAT64's well-known prefix: a gateway translates these to the IPv4 address in the low bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
FIB_TRIE = "/proc/net/fib_trie"
IF_INET6 = "/proc/net/if_inet6"


@dataclass(frozen=True)
class NetinstallPolicy:
    """Where network installs may fetch from, and how much and how long they may take.

    Always refused (the built-ins): loopback, unspecified, link-local (169.254/16, where clouds
    serve metadata, and fe80::/10), multicast, reserved, and every address of this host (read
    from the kernel at each check, so an address added later is covered). `deny` adds ranges,
    typically the management networks the hosts and the console live on. `allow` is for a lab
    whose mirror sits in a denied range, or on this host: an address inside it passes every
    check, so name a mirror's address, never a whole range that holds services.
    """

    deny: tuple[IPNetwork, ...] = ()
    allow: tuple[IPNetwork, ...] = ()
    # A kernel is ~10-20 MiB; an installer's initrd tens to a few hundred MiB.
    kernel_max_bytes: int = 256 * MIB
    initrd_max_bytes: int = 1024 * MIB
    timeout_s: float = 30 * 60.0  # both files, every lookup and redirect included
    connect_timeout_s: float = 15.0  # per lookup and per connection attempt
    idle_timeout_s: float = 120.0  # a server that sends nothing for this long has stalled
    max_redirects: int = 5


_policy = NetinstallPolicy()


def configure(policy: NetinstallPolicy) -> None:
    """Set the policy every later fetch uses (once, at start-up: `agent.__main__`)."""
    global _policy
    _policy = policy
    log.info(
        "network installs: refusing loopback, link-local, multicast, reserved, this host's addresses%s%s",
        f" and {', '.join(map(str, policy.deny))}" if policy.deny else "",
        f"; allowed anyway: {', '.join(map(str, policy.allow))}" if policy.allow else "",
    )


def current_policy() -> NetinstallPolicy:
    return _policy


def parse_network(value: str) -> IPNetwork:
    """An address range (CIDR) from a setting; a bare address is a range of one."""
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as err:
        raise ValueError(f"{value!r} is not an address range (CIDR, e.g. 10.0.0.0/8)") from err


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Ranges from settings that may each hold several, separated by commas or spaces."""
    return tuple(parse_network(item) for value in values for item in re.split(r"[,\s]+", value) if item)


# -- this host's addresses -------------------------------------------------------------------
_FIB_LEAF = re.compile(r"^\s*\|-- (\S+)\s*$")
_FIB_LOCAL = re.compile(r"^\s*/(\d+) \S+ LOCAL\b")


def parse_fib_trie(text: str) -> set[ipaddress.IPv4Network]:
    """The IPv4 ranges the kernel delivers locally (route type LOCAL: each address of each
    interface, 127/8, and any "AnyIP" range), from /proc/net/fib_trie. Unlike SIOCGIFADDR this
    sees secondary addresses too."""
    local: set[ipaddress.IPv4Network] = set()
    leaf: str | None = None
    for line in text.splitlines():
        if match := _FIB_LEAF.match(line):
            leaf = match.group(1)
        elif "+--" in line:
            leaf = None
        elif leaf is not None and (match := _FIB_LOCAL.match(line)):
            local.add(ipaddress.IPv4Network(f"{leaf}/{match.group(1)}", strict=False))
    return local


def parse_if_inet6(text: str) -> set[ipaddress.IPv6Network]:
    """This host's IPv6 addresses, from /proc/net/if_inet6 (32 hex digits first on each line)."""
    return {
        ipaddress.IPv6Network((int(fields[0], 16), 128))
        for fields in (line.split() for line in text.splitlines())
        if fields and len(fields[0]) == 32
    }


def read_host_networks() -> set[IPNetwork]:
    """Every address of this host, in the network namespace the agent (and so its fetches)
    runs in. Without them the check cannot be made: refuse rather than guess."""
    try:
        with open(FIB_TRIE, encoding="ascii") as handle:
            networks: set[IPNetwork] = set(parse_fib_trie(handle.read()))
    except OSError as err:
        raise InstallSourceRefused(
            f"network installs are refused: cannot read this host's addresses ({FIB_TRIE}: {err.strerror})"
        ) from err
    try:
        with open(IF_INET6, encoding="ascii") as handle:
            networks |= parse_if_inet6(handle.read())
    except FileNotFoundError:
        pass  # IPv6 is disabled: no IPv6 address to protect
    return networks


# -- the check ---------------------------------------------------------------------------------
def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: ::ffff:127.0.0.1 connects to 127.0.0.1, and a
    NAT64 gateway forwards 64:ff9b::a00:1 to 10.0.0.1."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _kind(address: IPAddress) -> str | None:
    """The built-in reason an address is never fetched from, or None."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address (it means this host)"
    if address.is_link_local or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local):
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:  # 240/4 with 255.255.255.255; much of IPv6 outside 2000::/3
        return "a reserved address"
    return None


def _refused_as(
    address: IPAddress, policy: NetinstallPolicy, host_networks: Iterable[IPNetwork]
) -> str | None:
    """What makes `address` refused, as a noun phrase ("a loopback address"), or None."""
    if any(address in network for network in policy.allow):
        return None
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner = _refused_as(embedded, policy, host_networks)
        return inner and f"the IPv6 form of {embedded}, {inner}"
    if (kind := _kind(address)) is not None:
        return kind
    if any(address in network for network in host_networks):
        return "one of this host's own addresses"
    if any(address in network for network in policy.deny):
        return "an address in a range this agent refuses (--netinstall-deny)"
    return None


class _Refused(Exception):
    """A destination failed the check; the caller says which field and hop."""


class _Unresolved(Exception):
    """A name could not be looked up: nothing to check, nothing to connect to."""


async def resolve_checked(host: str, port: int, policy: NetinstallPolicy) -> list[ResolveResult]:
    """The addresses of `host` to connect to, each one checked; `_Refused` if any fails: a name
    that resolves to a mirror and to 127.0.0.1 may well be answered from 127.0.0.1."""
    try:
        async with asyncio.timeout(policy.connect_timeout_s):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError as err:
        raise _Unresolved(f"resolving {host} took longer than {policy.connect_timeout_s:g} s") from err
    except OSError as err:
        raise _Unresolved(f"cannot resolve {host} ({err.strerror or type(err).__name__})") from err
    own = read_host_networks()
    results: list[ResolveResult] = []
    for family, _type, proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if (why := _refused_as(address, policy, own)) is not None:
            said = f"{address} is" if host == str(address) else f"{host} resolves to {address},"
            raise _Refused(f"{said} {why}")
        if all(r["host"] != str(address) for r in results):
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=port,
                    family=family,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
    if not results:
        raise _Unresolved(f"{host} resolves to no address")
    return results


class _PinnedResolver(AbstractResolver):
    """Answers aiohttp's lookup with the addresses that were just checked, and nothing for any
    other name: the connection goes where the check looked. (aiohttp connects to an address
    literal without asking; that literal is what was checked.)"""

    def __init__(self) -> None:
        self._pinned: dict[tuple[str, int], list[ResolveResult]] = {}

    def pin(self, host: str, port: int, results: list[ResolveResult]) -> None:
        self._pinned = {(_lookup_key(host), port): results}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = self._pinned.get((_lookup_key(host), port))
        if results is None:
            raise OSError(f"{host} was not checked")
        return [r for r in results if family in (socket.AF_UNSPEC, r["family"])]

    async def close(self) -> None:
        self._pinned = {}


def _lookup_key(host: str) -> str:
    # aiohttp collapses several trailing dots into one before it looks a name up.
    return host.rstrip(".") + "." if host.endswith("..") else host


# -- fetching ----------------------------------------------------------------------------------
def shown_url(url: URL) -> str:
    """A URL as errors show it: no credentials, no query (a redirect's may carry a token)."""
    plain = url.with_query(None).with_fragment(None)
    return str(plain.with_user(None) if plain.raw_user or plain.raw_password else plain)


def why_failed(err: aiohttp.ClientError, policy: NetinstallPolicy) -> str:
    """What went wrong with an allowed server, in our words: never the server's own text."""
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return f"no connection within {policy.connect_timeout_s:g} s"
    if isinstance(err, aiohttp.ServerTimeoutError):
        return f"the server sent nothing for {policy.idle_timeout_s:g} s"
    if isinstance(err, aiohttp.ClientSSLError):
        return f"TLS failed ({type(err.os_error).__name__})"
    if isinstance(err, aiohttp.ClientConnectorError):
        return f"cannot connect ({err.os_error.strerror or type(err.os_error).__name__})"
    if isinstance(err, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "the server broke off the transfer"
    return f"the exchange failed ({type(err).__name__})"


class CheckedFetcher:
    """Fetches through one session, one pinned resolver and one policy: every hop (the URL, each
    redirect) is checked before anything connects to it. Errors name the request's `field`
    (`boot.kernel`, `url`) and never carry what a server answered. Network installs and the
    agent's downloads into pools (agent/fetches.py) both go through it."""

    def __init__(self, session: aiohttp.ClientSession, resolver: _PinnedResolver, policy: NetinstallPolicy):
        self.session = session
        self.resolver = resolver
        self.policy = policy

    async def check(
        self, field: str, url: URL, came_from: URL | None = None, *, schemes: Sequence[str] = SCHEMES
    ) -> list[ResolveResult]:
        """The checked addresses to connect to for `url` (pinned for this session's next
        connection); InstallSourceRefused for a destination refused."""
        what = f"to fetch {shown_url(url)}" if came_from is None else f"the redirect to {shown_url(url)}"
        if url.scheme not in schemes:
            allowed = " and ".join(", ".join(f"{scheme}://" for scheme in schemes).rsplit(", ", 1))
            raise InstallSourceRefused(f"{field}: refused {what}: only {allowed} are fetched")
        if not url.raw_host or url.port is None:
            raise InvalidSpec(f"{field}: {shown_url(url)} names no host")
        try:
            results = await resolve_checked(url.raw_host, url.port, self.policy)
        except _Refused as err:
            log.warning("fetch: %s: refused %s: %s", field, what, err)
            raise InstallSourceRefused(f"{field}: refused {what}: {err}") from err
        except _Unresolved as err:
            raise InvalidSpec(f"{field}: cannot fetch {shown_url(url)}: {err}") from err
        self.resolver.pin(url.raw_host, url.port, results)
        return results

    async def open(self, field: str, start: URL) -> tuple[aiohttp.ClientResponse, URL]:
        """The answer of the last hop, redirects followed one checked hop at a time; the caller
        releases it."""
        url, came_from = start, None
        for _hop in range(self.policy.max_redirects + 1):
            await self.check(field, url, came_from)
            try:
                response = await self.session.get(url, allow_redirects=False)
            except aiohttp.ClientError as err:
                raise InvalidSpec(f"{field}: cannot fetch {shown_url(url)}: {self.why(err)}") from err
            if response.status not in _REDIRECTS:
                return response, url
            location = response.headers.get("Location", "")
            response.release()  # unread: a redirect's body is nobody's business
            if not location:
                raise InvalidSpec(
                    f"{field}: {shown_url(url)} answered HTTP {response.status} without a Location"
                )
            try:
                url, came_from = url.join(URL(location)), url
            except ValueError as err:
                raise InvalidSpec(f"{field}: {shown_url(url)} redirected to an invalid URL") from err
        raise InvalidSpec(f"{field}: more than {self.policy.max_redirects} redirects from {shown_url(start)}")

    def why(self, err: aiohttp.ClientError) -> str:
        return why_failed(err, self.policy)


@contextlib.asynccontextmanager
async def checked_fetcher(policy: NetinstallPolicy | None = None) -> AsyncIterator[CheckedFetcher]:
    """A CheckedFetcher under `policy` (the agent's, from its options, when None)."""
    policy = policy or _policy
    resolver = _PinnedResolver()
    async with _session(resolver, policy) as session:
        yield CheckedFetcher(session, resolver, policy)


@dataclass(frozen=True)
class _File:
    field: str  # the spec field errors name
    url: URL
    dest: str
    max_bytes: int


class _Fetch(CheckedFetcher):
    """One network install's fetches: a kernel and an initrd, each whole or not at all."""

    async def fetch(self, file: _File) -> None:
        if os.path.isfile(file.dest):
            return
        partial = file.dest + ".part"
        try:
            response, url = await self.open(file.field, file.url)
            try:
                size = await self._save(file, response, url, partial)
            finally:
                response.release()
            os.replace(partial, file.dest)
            log.info("network install: fetched %s (%d bytes)", shown_url(url), size)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)

    async def _save(self, file: _File, response: aiohttp.ClientResponse, url: URL, partial: str) -> int:
        shown, cap = shown_url(url), file.max_bytes
        too_large = f"{file.field}: {shown} is larger than {cap // MIB} MiB, the limit for this file"
        if response.status != 200:
            raise InvalidSpec(f"{file.field}: {shown} answered HTTP {response.status}")
        if response.content_length is not None and response.content_length > cap:
            raise InvalidSpec(too_large)
        size = 0
        try:
            with open(partial, "wb") as out:
                async for chunk in response.content.iter_chunked(MIB):
                    size += len(chunk)
                    if size > cap:
                        raise InvalidSpec(too_large)
                    out.write(chunk)
        except aiohttp.ClientError as err:
            raise InvalidSpec(f"{file.field}: cannot fetch {shown}: {self.why(err)}") from err
        if size == 0:
            raise InvalidSpec(f"{file.field}: {shown} is empty")
        return size


def installer_dir(default_dir: str, spec: DomainSpec) -> Path:
    return Path(default_dir) / INSTALL_DIR / str(spec.uuid)


def installer_paths(default_dir: str, spec: DomainSpec) -> tuple[str, str]:
    where = installer_dir(default_dir, spec)
    return str(where / "vmlinuz"), str(where / "initrd.img")


def remove_installer(default_dir: str, domain_uuid: str) -> None:
    shutil.rmtree(Path(default_dir) / INSTALL_DIR / domain_uuid, ignore_errors=True)


def _session(resolver: _PinnedResolver, policy: NetinstallPolicy) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False),
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=policy.connect_timeout_s, sock_read=policy.idle_timeout_s
        ),
        trust_env=False,  # an HTTP proxy from the environment would resolve and connect unchecked
    )


async def fetch_installer(
    spec: DomainSpec, default_dir: str, *, policy: NetinstallPolicy | None = None
) -> tuple[str, str]:
    """Download the kernel and initrd of `spec`'s network install; returns their paths."""
    boot = spec.boot
    if not isinstance(boot, NetworkInstall):
        raise ValueError("not a network install")
    policy = policy or _policy
    kernel, initrd = installer_paths(default_dir, spec)
    os.makedirs(os.path.dirname(kernel), mode=0o755, exist_ok=True)
    base = boot.url if boot.url.endswith("/") else boot.url + "/"
    files: Sequence[_File] = (
        _File("boot.kernel", URL(urljoin(base, boot.kernel)), kernel, policy.kernel_max_bytes),
        _File("boot.initrd", URL(urljoin(base, boot.initrd)), initrd, policy.initrd_max_bytes),
    )
    resolver = _PinnedResolver()
    deadline = asyncio.get_running_loop().time() + policy.timeout_s
    async with _session(resolver, policy) as session:
        fetch = _Fetch(session, resolver, policy)
        for file in files:
            try:
                async with asyncio.timeout_at(deadline):
                    await fetch.fetch(file)
            except TimeoutError as err:
                limit = f"{policy.timeout_s:g} s, the limit for a network install"
                raise InvalidSpec(
                    f"{file.field}: fetching {shown_url(file.url)} did not finish within {limit}"
                ) from err
    return kernel, initrd
