"""Async client of the agent API, for the console side (aiohttp only, no Django).

async with AgentClient("http://127.0.0.1:8901", secret) as agent:
    info = await agent.define(spec)
    async with agent.events() as ws:
        async for msg in ws: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import re
import ssl
import uuid as uuid_mod
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote, unquote, urlencode, urlsplit

import aiohttp
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.console_pipe import ConsolePipe, IdentityMismatch, PipeFailed, PipeRefused, open_pipe
from agent.protocol import (
    PROBLEM_HEADER,
    UPLOAD_ID,
    VOLUME_PAGE_DEFAULT,
    DeleteResult,
    DhcpSettings,
    DiskAttachRequest,
    DiskChange,
    DomainInfo,
    DomainSpec,
    FetchRequest,
    HostFacts,
    MediaRequest,
    NetworkAutostartRequest,
    NetworkResult,
    NetworkSpec,
    NicAttachRequest,
    NicChangeRequest,
    NicOutcome,
    PairRequest,
    PairResult,
    PoolAutostartRequest,
    PoolDeleteRequest,
    PoolResult,
    PoolSpec,
    Problem,
    ResourcesRequest,
    ResourcesResult,
    RotateRequest,
    UploadCreateRequest,
    UploadStatus,
    VolumeCloneRequest,
    VolumeCreateRequest,
    VolumeList,
    VolumeResizeRequest,
    VolumeResult,
    format_fingerprint,
)

M = TypeVar("M", bound=BaseModel)
_DOMAINS = TypeAdapter(list[DomainInfo])
UPLOAD_ID_RE = re.compile(UPLOAD_ID)


class AgentError(Exception):
    """A non-2xx answer from the agent (or no answer at all, see AgentUnreachable). `offset` is
    the upload's offset when a piece was sent at another (an AgentConflict), else None."""

    def __init__(self, status: int, code: str, detail: str, *, offset: int | None = None) -> None:
        super().__init__(f"{code} ({status}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.offset = offset


class AgentUnauthorized(AgentError):
    pass


class AgentNotFound(AgentError):
    pass


class AgentInvalid(AgentError):
    pass


class AgentConflict(AgentError):
    pass


class AgentInsufficientStorage(AgentError):
    """507: the pool's file system has no room for an upload (or for the rest of it)."""


class AgentRefused(AgentError):
    """403/410: e.g. a pairing code that does not match, has expired or was used."""


class AgentUnreachable(AgentError):
    """Connection refused, DNS failure or timeout: the agent could not be asked."""


class AgentIdentityChanged(AgentUnreachable):
    """The agent presented a certificate other than the pinned one; nothing was sent to it."""


class AgentLibvirtDown(AgentError):
    """503: the agent answered, but its libvirt connection is down for now (it reconnects)."""


def is_transient(err: BaseException) -> bool:
    """Whether asking again later may well work: the agent could not be reached, or could not
    reach libvirt. Not a changed identity: that needs a person."""
    return isinstance(err, (AgentUnreachable, AgentLibvirtDown)) and not isinstance(err, AgentIdentityChanged)


_BY_STATUS: dict[int, type[AgentError]] = {
    400: AgentInvalid,
    401: AgentUnauthorized,
    403: AgentRefused,
    404: AgentNotFound,
    409: AgentConflict,
    410: AgentRefused,
    503: AgentLibvirtDown,
    507: AgentInsufficientStorage,
}


@functools.cache
def _unverified_tls() -> ssl.SSLContext:
    """The context for learning or checking a certificate's fingerprint (trust comes from the
    pin), shared by every such connection. It loads no CA certificates: it verifies none, and
    the system's bundle cost every console socket about 900 KiB (a context of its own each)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def fetch_fingerprint(url: str, *, timeout: float = 10.0) -> str:
    """The SHA-256 fingerprint (lowercase hex) of the certificate an https agent presents."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=_unverified_tls(), server_hostname=host or None),
            timeout,
        )
    except (TimeoutError, OSError, ssl.SSLError) as err:
        why = "timed out" if isinstance(err, TimeoutError) else str(err) or type(err).__name__
        raise AgentUnreachable(0, "unreachable", f"cannot reach {url} over TLS: {why}") from err
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return hashlib.sha256(der).hexdigest()


_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WS_ABORT_CLOSE_SECONDS = 1.0  # a WebSocket left on an error: how long its close handshake may take
# A volume copy, or a preallocation where the file system cannot reserve space at once, writes
# the whole volume before it answers: minutes for a big one.
_VOLUME_COPY_TIMEOUT = aiohttp.ClientTimeout(total=6 * 3600, sock_connect=30)


def _error_for(status: int, raw: bytes) -> AgentError:
    """The AgentError of an error answer, from its Problem body."""
    try:
        problem = Problem.model_validate_json(raw)
    except ValidationError:
        problem = Problem(error="http_error", detail=raw.decode(errors="replace")[:500] or f"HTTP {status}")
    return _BY_STATUS.get(status, AgentError)(status, problem.error, problem.detail, offset=problem.offset)


class AgentClient:
    def __init__(
        self,
        base_url: str,
        secret: str,
        *,
        timeout: float = 120.0,
        fingerprint: str = "",
        idempotency_key: str = "",
    ) -> None:
        """`fingerprint` pins the agent's certificate (sha256, lowercase hex): any other
        certificate is refused before a byte of the request is sent.

        `idempotency_key` (e.g. "job-42") makes every mutating call carry the header
        `Idempotency-Key: <idempotency_key>:<METHOD> <path>`: the same call made again under the
        same prefix (a job retried after its worker died) is answered by the agent from memory
        instead of being done twice (agent/idempotency.py). A caller that must repeat one call
        on purpose uses another prefix."""
        self.base_url = base_url.rstrip("/")
        self.idempotency_key = idempotency_key
        self._headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.fingerprint = fingerprint
        self._ssl: aiohttp.Fingerprint | bool = True  # no pin: the usual CA verification
        if fingerprint:
            self._ssl = aiohttp.Fingerprint(bytes.fromhex(fingerprint))

    async def __aenter__(self) -> AgentClient:
        connector = aiohttp.TCPConnector(ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=self._timeout,
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # the agent sets none
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use `async with AgentClient(...)` before calling it")
        return self._session

    def _unreachable(self, err: BaseException) -> AgentUnreachable:
        if isinstance(err, aiohttp.ServerFingerprintMismatch):
            err = IdentityMismatch(expected=err.expected.hex(), got=err.got.hex())
        if isinstance(err, IdentityMismatch):
            return AgentIdentityChanged(
                0,
                "identity_changed",
                f"the agent at {self.base_url} presented a different TLS certificate "
                f"({format_fingerprint(err.got)}) from the one pinned at enrolment "
                f"({format_fingerprint(err.expected)}); nothing was sent to it. If the host "
                "was reinstalled on purpose, remove it and add it again with a new pairing code.",
            )
        if isinstance(err, asyncio.TimeoutError):
            why = "timed out"
        else:
            why = str(err) or type(err).__name__
        return AgentUnreachable(0, "unreachable", f"agent at {self.base_url} is unreachable: {why}")

    async def _request(
        self, method: str, path: str, *, key_suffix: str = "", **kwargs: Any
    ) -> tuple[int, Any]:
        if self.idempotency_key and method in _MUTATING:
            kwargs["headers"] = {
                **kwargs.get("headers", {}),
                "Idempotency-Key": f"{self.idempotency_key}:{method} {path}{key_suffix}",
            }
        status, raw = await self._raw_request(method, path, **kwargs)
        try:
            body = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        return status, body

    async def _raw_request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        """The answer's status and bytes; an error status raises the matching AgentError."""
        try:
            async with self.session.request(method, self.base_url + path, **kwargs) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientConnectionError) as err:
            raise self._unreachable(err) from err
        if status >= 400:
            raise _error_for(status, raw)
        return status, raw

    async def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        _status, body = await self._request(method, path, **kwargs)
        return model.model_validate(body)

    # -- API ---------------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        _status, body = await self._request("GET", "/v1/health")
        return dict(body)

    async def host(self) -> HostFacts:
        return await self._model(HostFacts, "GET", "/v1/host")

    async def pair(self, request: PairRequest) -> PairResult:
        payload = json.loads(request.model_dump_json())
        return await self._model(PairResult, "POST", "/v1/pair", json=payload)

    async def unpair(self) -> None:
        await self._request("DELETE", "/v1/pair")

    async def rotate(self, new_secret: str) -> None:
        payload = json.loads(RotateRequest(secret=new_secret).model_dump_json())
        await self._request("POST", "/v1/pair/rotate", json=payload)

    async def host_refresh(self) -> HostFacts:
        return await self._model(HostFacts, "GET", "/v1/host", params={"refresh": "true"})

    async def list_domains(self) -> list[DomainInfo]:
        _status, body = await self._request("GET", "/v1/domains")
        return _DOMAINS.validate_python(body)

    async def get_domain(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._model(DomainInfo, "GET", f"/v1/domains/{domain_uuid}")

    async def define(self, spec: DomainSpec) -> DomainInfo:
        payload = json.loads(spec.model_dump_json())
        return await self._model(DomainInfo, "POST", "/v1/domains", json=payload)

    async def start(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._model(DomainInfo, "POST", f"/v1/domains/{domain_uuid}/start")

    async def shutdown(self, domain_uuid: uuid_mod.UUID, *, press: int = 1) -> DomainInfo:
        """Press the ACPI power button. A guest still in its firmware or early boot loses the
        press, so a job presses again; each press after the first is its own request (its own
        idempotency key), or the agent would answer it from its memory of the first."""
        suffix = f" press {press}" if press > 1 else ""
        return await self._model(DomainInfo, "POST", f"/v1/domains/{domain_uuid}/shutdown", key_suffix=suffix)

    async def suspend(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._model(DomainInfo, "POST", f"/v1/domains/{domain_uuid}/suspend")

    async def resume(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._model(DomainInfo, "POST", f"/v1/domains/{domain_uuid}/resume")

    async def set_autostart(self, domain_uuid: uuid_mod.UUID, enabled: bool) -> DomainInfo:
        params = {"enabled": "true" if enabled else "false"}
        return await self._model(DomainInfo, "POST", f"/v1/domains/{domain_uuid}/autostart", params=params)

    async def set_resources(
        self, domain_uuid: uuid_mod.UUID, *, memory_mib: int | None = None, vcpus: int | None = None
    ) -> ResourcesResult:
        body = ResourcesRequest(memory_mib=memory_mib, vcpus=vcpus).model_dump(exclude_none=True)
        return await self._model(ResourcesResult, "POST", f"/v1/domains/{domain_uuid}/resources", json=body)

    async def rename(self, domain_uuid: uuid_mod.UUID, name: str) -> DomainInfo:
        return await self._model(DomainInfo, "POST", f"/v1/domains/{domain_uuid}/rename", json={"name": name})

    # -- disks and CD-ROM drives -------------------------------------------------------------
    async def attach_disk(self, domain_uuid: uuid_mod.UUID, request: DiskAttachRequest) -> DiskChange:
        """Add a disk (a new volume, an overlay, an existing volume) or a CD-ROM drive (an ISO, or
        empty) on the next free target of its bus: `applied` "now" (the running guest has it, or
        the domain is off) or "next boot" (`detail` says why). AgentConflict: the volume is
        another domain's writable disk; AgentInvalid: no such volume or ISO."""
        body = request.model_dump_json()
        kwargs: dict[str, Any] = {"json": json.loads(body)}
        disk = request.disk
        if request.device == "disk" and disk.existing is None and disk.allocation == "preallocated":
            kwargs["timeout"] = _VOLUME_COPY_TIMEOUT  # the volume is written whole before the answer
        # The request is part of the key: a job that attaches two disks makes two requests.
        suffix = f" {hashlib.sha256(body.encode()).hexdigest()[:16]}"
        path = f"/v1/domains/{domain_uuid}/disks"
        return await self._model(DiskChange, "POST", path, key_suffix=suffix, **kwargs)

    async def detach_disk(self, domain_uuid: uuid_mod.UUID, target: str) -> DiskChange:
        """Take the disk or drive at `target` off the domain; its volume is kept. `applied` "next
        boot" when the running guest did not release it (`detail` says so). AgentNotFound: no
        such target."""
        return await self._model(DiskChange, "POST", f"{self._disk_path(domain_uuid, target)}/detach")

    async def change_media(self, domain_uuid: uuid_mod.UUID, target: str, path: str | None) -> DiskChange:
        """Put the ISO at `path` in the CD-ROM drive at `target`, or eject its disc (`path` None).
        AgentInvalid: not a CD-ROM drive, or no such ISO; AgentConflict: the guest locked the tray."""
        body = MediaRequest(path=path).model_dump()
        suffix = f" {path}" if path is not None else " eject"  # insert, eject, insert: three requests
        return await self._model(
            DiskChange, "POST", f"{self._disk_path(domain_uuid, target)}/media", json=body, key_suffix=suffix
        )

    @staticmethod
    def _disk_path(domain_uuid: uuid_mod.UUID, target: str) -> str:
        if target in ("", ".", ".."):
            raise AgentNotFound(404, "not_found", f"no disk {target!r}")
        return f"/v1/domains/{domain_uuid}/disks/{quote(target, safe='')}"

    # -- network cards -----------------------------------------------------------------------
    async def attach_nic(self, domain_uuid: uuid_mod.UUID, request: NicAttachRequest) -> NicOutcome:
        """Add a network card with the MAC the request names: `applied` "now" (the running guest
        has it, or the domain is off) or "next boot" (`detail` says why). The same card again is
        answered as it is. AgentInvalid: no such network or bridge on the host; AgentConflict: the
        MAC is another card's, or the network is not running while the domain is."""
        body = request.model_dump_json()
        # The request is part of the key: a job that attaches two cards makes two requests.
        suffix = f" {hashlib.sha256(body.encode()).hexdigest()[:16]}"
        path = f"/v1/domains/{domain_uuid}/nics"
        return await self._model(NicOutcome, "POST", path, json=json.loads(body), key_suffix=suffix)

    async def detach_nic(self, domain_uuid: uuid_mod.UUID, mac: str) -> NicOutcome:
        """Take the card with this MAC off the domain. `applied` "next boot" when the running guest
        did not release it (`detail` says so). AgentNotFound: no such card."""
        return await self._model(NicOutcome, "POST", f"{self._nic_path(domain_uuid, mac)}/detach")

    async def change_nic(self, domain_uuid: uuid_mod.UUID, mac: str, request: NicChangeRequest) -> NicOutcome:
        """Change a card's link state, network or bridge, or MAC (shut off only); `applied` "next
        boot" when the running guest could not take it (`detail` says why). AgentConflict: a MAC
        change while the domain runs, or a MAC another card has; AgentInvalid: no such network or
        bridge."""
        body = request.model_dump_json(exclude_none=True)
        # The change is part of the key: a job that takes the link down, then up, makes two requests.
        suffix = f" {hashlib.sha256(body.encode()).hexdigest()[:16]}"
        return await self._model(
            NicOutcome, "PATCH", self._nic_path(domain_uuid, mac), json=json.loads(body), key_suffix=suffix
        )

    @staticmethod
    def _nic_path(domain_uuid: uuid_mod.UUID, mac: str) -> str:
        if mac in ("", ".", ".."):
            raise AgentNotFound(404, "not_found", f"no network card {mac!r}")
        return f"/v1/domains/{domain_uuid}/nics/{quote(mac, safe=':')}"

    async def reboot(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._model(DomainInfo, "POST", f"/v1/domains/{domain_uuid}/reboot")

    async def destroy(self, domain_uuid: uuid_mod.UUID) -> DomainInfo:
        return await self._model(DomainInfo, "POST", f"/v1/domains/{domain_uuid}/destroy")

    async def delete(
        self, domain_uuid: uuid_mod.UUID, delete_disks: bool, keep: list[str] | None = None
    ) -> DeleteResult:
        """Undefine it; with `delete_disks`, delete its disks too except those in `keep`."""
        params: list[tuple[str, str]] = [("delete_disks", "true" if delete_disks else "false")]
        params += [("keep", path) for path in keep or []]
        return await self._model(DeleteResult, "DELETE", f"/v1/domains/{domain_uuid}", params=params)

    # -- storage pools -----------------------------------------------------------------------
    async def define_pool(self, spec: PoolSpec) -> PoolResult:
        """Define a pool (and build, start, autostart it as `spec` says). The same pool defined
        again is answered as it is; another pool under the same name is an AgentConflict."""
        payload = json.loads(spec.model_dump_json())
        return await self._model(PoolResult, "POST", "/v1/pools", json=payload)

    async def pool_action(self, name: str, action: Literal["start", "stop", "refresh"]) -> PoolResult:
        if action not in ("start", "stop", "refresh"):
            raise ValueError(f"unknown storage pool action {action!r}")
        return await self._model(PoolResult, "POST", f"/v1/pools/{quote(name, safe='')}/{action}")

    async def set_pool_autostart(self, name: str, autostart: bool) -> PoolResult:
        body = PoolAutostartRequest(autostart=autostart).model_dump()
        # The value is part of the key: a job that turns it on, then off, makes two requests.
        suffix = " on" if autostart else " off"
        path = f"/v1/pools/{quote(name, safe='')}/autostart"
        return await self._model(PoolResult, "POST", path, json=body, key_suffix=suffix)

    async def delete_pool(self, name: str, delete_storage: bool = False) -> PoolResult:
        """Stop it if it runs, delete its storage if asked, undefine it (AgentConflict while a
        domain has a disk in it)."""
        body = PoolDeleteRequest(delete_storage=delete_storage).model_dump()
        return await self._model(PoolResult, "POST", f"/v1/pools/{quote(name, safe='')}/delete", json=body)

    # -- virtual networks --------------------------------------------------------------------
    @staticmethod
    def _network_path(name: str) -> str:
        # '.' and '..' survive quoting and the URL would be normalised into another route: never sent.
        if name in ("", ".", ".."):
            raise AgentNotFound(404, "not_found", f"no network {name!r} (not a valid network name)")
        return f"/v1/networks/{quote(name, safe='')}"

    async def define_network(self, spec: NetworkSpec) -> NetworkResult:
        """Define a network (and start it, set it to start with the host, as `spec` says). The
        same network defined again is answered as it is; another network under the name is an
        AgentConflict; a bridge the host lacks, or a subnet or bridge another network has, is
        AgentInvalid naming the field."""
        payload = json.loads(spec.model_dump_json())
        return await self._model(NetworkResult, "POST", "/v1/networks", json=payload)

    async def network_action(self, name: str, action: Literal["start", "stop"]) -> NetworkResult:
        """Start or stop it (doing it again is no error). Stopping is an AgentConflict while a
        running domain has a network card on it."""
        if action not in ("start", "stop"):
            raise ValueError(f"unknown network action {action!r}")
        return await self._model(NetworkResult, "POST", f"{self._network_path(name)}/{action}")

    async def set_network_autostart(self, name: str, autostart: bool) -> NetworkResult:
        body = NetworkAutostartRequest(autostart=autostart).model_dump()
        # The value is part of the key: a job that turns it on, then off, makes two requests.
        suffix = " on" if autostart else " off"
        path = f"{self._network_path(name)}/autostart"
        return await self._model(NetworkResult, "POST", path, json=body, key_suffix=suffix)

    async def update_network_dhcp(self, name: str, settings: DhcpSettings) -> NetworkResult:
        """Make the network's DHCP range and static hosts those of `settings` (hosts not listed
        go), in its definition and, when it runs, live; `detail` says when it takes effect.
        AgentInvalid naming the field when they do not fit the network's address."""
        body = settings.model_dump_json()
        # The settings are part of the key: a job that changes DHCP twice makes two requests.
        suffix = f" {hashlib.sha256(body.encode()).hexdigest()[:16]}"
        path = f"{self._network_path(name)}/dhcp"
        return await self._model(NetworkResult, "PUT", path, json=json.loads(body), key_suffix=suffix)

    async def delete_network(self, name: str) -> NetworkResult:
        """Stop it if it runs, undefine it (AgentConflict while a running domain has a network
        card on it)."""
        return await self._model(NetworkResult, "DELETE", self._network_path(name))

    # -- the volumes of a pool ---------------------------------------------------------------
    @staticmethod
    def _pool_path(pool: str) -> str:
        # '.' and '..' survive quoting and the URL would be normalised into another route (a
        # volume named '..' deleted as `/v1/pools/<pool>/delete`): never sent.
        if pool in ("", ".", ".."):
            raise AgentNotFound(404, "not_found", f"no storage pool {pool!r} (not a valid pool name)")
        return f"/v1/pools/{quote(pool, safe='')}"

    @staticmethod
    def _volumes_path(pool: str, name: str | None = None) -> str:
        path = f"{AgentClient._pool_path(pool)}/volumes"
        if name is None:
            return path
        if name in ("", ".", ".."):
            raise AgentNotFound(404, "not_found", f"no volume {name!r} (not a valid volume name)")
        return f"{path}/{quote(name, safe='')}"

    async def list_volumes(
        self, pool: str, *, limit: int = VOLUME_PAGE_DEFAULT, offset: int = 0
    ) -> VolumeList:
        """`limit` volumes of the pool from `offset`, by name (`total` counts them all). The agent
        rescans the pool first, so files copied in by hand are there."""
        params = {"limit": str(limit), "offset": str(offset)}
        return await self._model(VolumeList, "GET", self._volumes_path(pool), params=params)

    async def create_volume(self, pool: str, request: VolumeCreateRequest) -> VolumeResult:
        """Make a volume. The same one asked again is answered as it is; another volume under the
        name is an AgentConflict; a preallocated one the pool has no room for is AgentInvalid."""
        payload = json.loads(request.model_dump_json())
        # The name is part of the key: a job that makes two volumes in one pool makes two requests.
        return await self._model(
            VolumeResult,
            "POST",
            self._volumes_path(pool),
            json=payload,
            key_suffix=f" {request.name}",
            timeout=_VOLUME_COPY_TIMEOUT,
        )

    async def resize_volume(self, pool: str, name: str, capacity_bytes: int) -> VolumeResult:
        """Grow a volume (AgentInvalid for a smaller or equal size): through the running domain
        that writes it, whose guest then sees it at once, else the volume itself."""
        body = VolumeResizeRequest(capacity_bytes=capacity_bytes).model_dump()
        path = f"{self._volumes_path(pool, name)}/resize"
        return await self._model(VolumeResult, "POST", path, json=body, key_suffix=f" to {capacity_bytes}")

    async def clone_volume(self, pool: str, name: str, new_name: str) -> VolumeResult:
        """Copy a volume under `new_name` in the same pool (AgentConflict while a running domain
        writes it, or when the name is taken)."""
        body = VolumeCloneRequest(name=new_name).model_dump()
        path = f"{self._volumes_path(pool, name)}/clone"
        return await self._model(
            VolumeResult, "POST", path, json=body, key_suffix=f" as {new_name}", timeout=_VOLUME_COPY_TIMEOUT
        )

    async def delete_volume(self, pool: str, name: str) -> VolumeResult:
        """Delete a volume (AgentConflict while a domain on the host uses it, or another volume is
        layered on it)."""
        return await self._model(VolumeResult, "POST", f"{self._volumes_path(pool, name)}/delete")

    @asynccontextmanager
    async def download_volume(
        self, pool: str, name: str, *, offset: int = 0, if_range: str | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """`async with client.download_volume(pool, name) as resp:` then
        `async for chunk in resp.content.iter_chunked(1 << 20): ...` — the bytes as they come,
        never held whole. Its headers carry Content-Length, Content-Disposition (the file name),
        ETag and Last-Modified (for a file). From `offset` on: 206 with Content-Range; but when
        `if_range` (the ETag or Last-Modified of the part already held) no longer matches, the
        volume changed and all of it comes again (200). Refusals raise AgentError subclasses
        before anything is yielded (AgentConflict while a running domain writes the volume)."""
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        if if_range:
            headers["If-Range"] = if_range
        # No bound on the whole (a volume takes as long as it takes); a stalled one fails.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self._timeout.total)
        url = f"{self.base_url}{self._volumes_path(pool, name)}/download"
        try:
            resp = await self.session.get(url, headers=headers, timeout=timeout)
        except (TimeoutError, aiohttp.ClientConnectionError) as err:
            raise self._unreachable(err) from err
        try:
            if resp.status >= 400:
                try:
                    raw = await resp.read()
                except (TimeoutError, aiohttp.ClientConnectionError) as err:
                    raise self._unreachable(err) from err
                raise _error_for(resp.status, raw)
            yield resp
        finally:
            resp.release()

    # -- uploads and fetches into a pool -----------------------------------------------------
    @staticmethod
    def _uploads_path(pool: str, upload_id: str | None = None) -> str:
        path = f"{AgentClient._pool_path(pool)}/uploads"
        if upload_id is None:
            return path
        if not UPLOAD_ID_RE.match(upload_id):
            raise AgentNotFound(404, "not_found", f"no upload {upload_id!r} (32 lowercase hex digits)")
        return f"{path}/{upload_id}"

    async def _upload_model(self, method: str, path: str, **kwargs: Any) -> UploadStatus:
        """Upload calls carry no idempotency key: each is safe to repeat by itself (an upload is
        named by its id, a piece by its offset), and an answer replayed from memory would show an
        upload as it stood then, not as it stands."""
        _status, raw = await self._raw_request(method, path, **kwargs)
        return UploadStatus.model_validate_json(raw)

    async def create_upload(self, pool: str, upload_id: str, name: str, length: int) -> UploadStatus:
        """Begin an upload of `length` bytes into volume `name` of a directory pool (dir, fs,
        netfs), named by `upload_id` (a uuid4's hex). The same call again answers the upload as it
        stands. AgentConflict: the id is another upload's, or the name is taken (a volume, or
        another upload under way); AgentInsufficientStorage: no room; AgentInvalid: not a
        directory pool."""
        body = UploadCreateRequest(id=upload_id, name=name, length=length).model_dump()
        return await self._upload_model("POST", self._uploads_path(pool), json=body)

    async def upload_status(self, pool: str, upload_id: str) -> UploadStatus:
        """An upload or fetch as it stands: its offset, state, digest once complete
        (AgentNotFound once deleted or expired)."""
        return await self._upload_model("GET", self._uploads_path(pool, upload_id))

    async def upload_chunk(
        self, pool: str, upload_id: str, offset: int, body: AsyncIterable[bytes] | bytes
    ) -> UploadStatus:
        """Send bytes of an upload from `offset`: `body` whole (with a Content-Length), or as an
        async iterable of pieces streamed in a chunked body as they come. The agent writes them
        as they arrive; if the body ends early, what arrived is kept (ask `upload_status`, or
        send again from its offset). The answer is the upload after them: `complete` once the
        last byte is in, with its `sha256` and `path`.

        AgentConflict with `.offset` set: `offset` is not the upload's offset, which `.offset`
        is (resume from there); AgentConflict without it: complete already, or another request is
        writing it. AgentInvalid: the body goes past the upload's length (nothing past it is
        written). AgentInsufficientStorage: the pool ran out of room (what was written is kept).
        No bound on the whole call (a big piece takes as long as it takes); a stalled one fails."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self._timeout.total)
        headers = {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        path = self._uploads_path(pool, upload_id)
        return await self._upload_model("PATCH", path, data=body, headers=headers, timeout=timeout)

    async def delete_upload(self, pool: str, upload_id: str) -> None:
        """Cancel an upload (a fetch is stopped first) and remove its bytes; of a complete one,
        only the agent's record goes: never the volume. AgentNotFound if there is none."""
        await self._raw_request("DELETE", self._uploads_path(pool, upload_id))

    async def fetch_url(self, pool: str, request: FetchRequest) -> UploadStatus:
        """The agent downloads `request.url` (http, https or ftp) into volume `request.name` in
        the background, under its network-install policy (loopback, link-local, this host and
        `--netinstall-deny` ranges refused, each redirect checked); follow it with
        `upload_status` (state fetching, then complete or failed with its `error`). The same
        request again answers the fetch as it stands."""
        body = json.loads(request.model_dump_json())
        return await self._upload_model("POST", f"{self._pool_path(pool)}/fetches", json=body)

    # -- WebSockets --------------------------------------------------------------------------
    @asynccontextmanager
    async def _ws(self, path: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        try:
            ws = await self.session.ws_connect(
                self.base_url + path, timeout=aiohttp.ClientWSTimeout(ws_close=10), heartbeat=30
            )
        except aiohttp.WSServerHandshakeError as err:
            # The agent answers before the upgrade with a Problem; its status is what counts.
            cls = _BY_STATUS.get(err.status, AgentError)
            detail = unquote(err.headers.get(PROBLEM_HEADER, "") if err.headers else "") or err.message
            raise cls(err.status, _BY_STATUS_CODE.get(err.status, "http_error"), detail) from err
        except (TimeoutError, aiohttp.ClientConnectionError) as err:
            raise self._unreachable(err) from err
        try:
            yield ws
        except BaseException:
            # Perhaps the agent is why (frozen, gone, too slow): its goodbye is not awaited for
            # ws_close's 10 s, which would hold back the caller's own handling of the failure
            # (hostwatch marking the host offline).
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                async with asyncio.timeout(WS_ABORT_CLOSE_SECONDS):
                    await ws.close()
            raise
        else:
            await ws.close()

    def events(self) -> AbstractAsyncContextManager[aiohttp.ClientWebSocketResponse]:
        """`async with client.events() as ws:` — JSON text frames (see agent.protocol.AgentEvent)."""
        return self._ws("/v1/events")

    async def serial_log(self, domain_uuid: uuid_mod.UUID) -> bytes:
        """The last output of the domain's serial console, as the agent recorded it."""
        _status, raw = await self._raw_request("GET", f"/v1/domains/{domain_uuid}/console/serial/log")
        return raw

    def open_serial(
        self, domain_uuid: uuid_mod.UUID, *, user: str = "", mode: str = "interact"
    ) -> AbstractAsyncContextManager[ConsolePipe]:
        """`async with client.open_serial(uuid) as ws:` — output and keystrokes as binary
        frames; presence notices (JSON) from the agent and control requests to it as text.
        `user` names the viewer to the others; a `view` viewer never types."""
        return self.open_console(domain_uuid, kind="serial", user=user, mode=mode)

    @asynccontextmanager
    async def open_console(
        self, domain_uuid: uuid_mod.UUID, *, kind: str, user: str = "", mode: str = "interact"
    ) -> AsyncIterator[ConsolePipe]:
        """A console byte pipe of `kind`: `serial` (see open_serial) or `vnc`, the RFB protocol
        in binary messages (the agent has done the server's handshake and offers the viewer no
        authentication), with the same presence notices and control requests as text ones;
        a `view` viewer's input events never reach the guest. Binary messages are pieces of a
        byte stream, cut wherever the network cut them (agent.console_pipe)."""
        query = urlencode({"user": user, "mode": mode})
        url = f"{self.base_url}/v1/domains/{domain_uuid}/console/{kind}?{query}"
        try:
            pipe = await open_pipe(
                url,
                self._headers,
                ssl_context=_unverified_tls() if self.fingerprint else None,
                fingerprint=self.fingerprint,
            )
        except PipeRefused as err:  # the agent answers before the upgrade: its status counts
            cls = _BY_STATUS.get(err.status, AgentError)
            raise cls(err.status, _BY_STATUS_CODE.get(err.status, "http_error"), err.detail) from err
        except (IdentityMismatch, PipeFailed, OSError, TimeoutError) as err:
            raise self._unreachable(err) from err
        try:
            yield pipe
        finally:
            await pipe.close()


_BY_STATUS_CODE = {400: "invalid_spec", 401: "unauthorized", 404: "not_found", 409: "conflict"}
