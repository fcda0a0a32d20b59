"""HTTP side of the agent: middlewares (request log, auth, problem bodies) and JSON routes."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import time
import uuid as uuid_mod
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent import __version__
from agent.errors import AgentProblem, Conflict, InvalidSpec, NotFound, OffsetConflict, Unauthorized
from agent.identity import AgentIdentity, ConsoleKeys
from agent.protocol import (
    NETWORK_NAME,
    POOL_NAME,
    PROBLEM_HEADER,
    UPLOAD_ID,
    VOLUME_PAGE_DEFAULT,
    VOLUME_PAGE_MAX,
    DhcpSettings,
    DiskAttachRequest,
    DomainInfo,
    DomainSpec,
    FetchRequest,
    MediaRequest,
    NetworkAutostartRequest,
    NetworkSpec,
    NicAttachRequest,
    NicChangeRequest,
    PairRequest,
    PairResult,
    PoolAutostartRequest,
    PoolDeleteRequest,
    PoolSpec,
    Problem,
    RenameRequest,
    ResourcesRequest,
    RotateRequest,
    UploadCreateRequest,
    VolumeCloneRequest,
    VolumeCreateRequest,
    VolumeResizeRequest,
)
from agent.runtime import AgentRuntime
from agent.volumes import RangeNotSatisfiable, VolumeDownload, byte_range

log = logging.getLogger("agent.http")

RUNTIME: web.AppKey[AgentRuntime] = web.AppKey("runtime", AgentRuntime)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({("GET", "/v1/health"), ("POST", "/v1/pair")})
DOMAIN_LIST = TypeAdapter(list[DomainInfo])
CONSOLE_ID = web.RequestKey("console_id", str)  # which paired console is calling
POOL_NAME_RE = re.compile(POOL_NAME)
NETWORK_NAME_RE = re.compile(NETWORK_NAME)
# A volume named in a URL: any name a pool lists (files copied in by hand need not follow
# VOLUME_NAME, as new ones do), never a path: no '/', no control character, not hidden ('.').
VOLUME_REF_RE = re.compile(r"^[^/.\x00-\x1f\x7f][^/\x00-\x1f\x7f]{0,254}$")
UPLOAD_ID_RE = re.compile(UPLOAD_ID)
# A disk's target in a URL: vdb, sdc, hda, xvdaa ... (libvirt's names are letters and digits).
DISK_TARGET_RE = re.compile(r"^[a-z][a-z0-9]{1,31}$")
# A network card in a URL: its MAC, six hex pairs with colons (either case; answered lowercase).
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
OFFSET_HEADER = "Upload-Offset"  # where a piece of an upload starts (tus's name for it)
# Routes whose body is a stream of bytes, read a piece at a time and never whole (so never by the
# idempotency middleware: a repeated piece is refused by its offset instead).
STREAMED_BODY_ROUTES = frozenset({"upload-piece"})


def problem_response(status: int, code: str, detail: str, *, offset: int | None = None) -> web.Response:
    body = Problem(error=code, detail=detail, offset=offset).model_dump_json(exclude_none=True)
    headers = {PROBLEM_HEADER: quote(detail[:500])}
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def model_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(status=status, text=model.model_dump_json(), content_type="application/json")


def render_validation_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "body"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


@web.middleware
async def log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        log.info(
            "%s %s %s %.1fms %s",
            request.method,
            request.path,
            status,
            (time.monotonic() - started) * 1000,
            request.remote,
        )


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AgentProblem as err:
        if err.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, err.detail)
        offset = err.offset if isinstance(err, OffsetConflict) else None
        return problem_response(err.status, err.code, err.detail, offset=offset)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status, "http_error")
        return problem_response(err.status, code, f"{request.method} {request.path}: {err.reason}")


def make_auth(keys: ConsoleKeys) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method, request.path) not in PUBLIC_PATHS:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            console_id = keys.authenticate(given) if scheme == "Bearer" and given else None
            if console_id is None:
                raise Unauthorized("missing or wrong bearer token")
            request[CONSOLE_ID] = console_id
        return await handler(request)

    return authenticate


def _uuid(request: web.Request) -> uuid_mod.UUID:
    raw = request.match_info["uuid"]
    try:
        return uuid_mod.UUID(raw)
    except ValueError as err:
        raise NotFound(f"no domain with uuid {raw!r} (not a valid UUID)") from err


def _pool_name(request: web.Request) -> str:
    raw = request.match_info["name"]
    if not POOL_NAME_RE.match(raw) or raw in (".", ".."):
        raise NotFound(f"no storage pool {raw!r} (not a valid pool name)")
    return raw


def _network_name(request: web.Request) -> str:
    raw = request.match_info["name"]
    if not NETWORK_NAME_RE.match(raw) or raw in (".", ".."):
        raise NotFound(f"no network {raw!r} (not a valid network name)")
    return raw


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no", ""):
        return False
    raise InvalidSpec(f"{name}: expected true or false, got {raw!r}")


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "version": __version__})


async def host(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if _bool_param(request, "refresh"):
        await runtime.refresh_capabilities()
    return model_response(await runtime.host_facts())


async def _model_body(request: web.Request, model: type[M]) -> M:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidSpec(f"body: not valid JSON ({err})") from err
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise InvalidSpec(render_validation_error(err)) from err


def _identity(request: web.Request) -> AgentIdentity:
    identity = request.app[RUNTIME].identity
    if identity is None:
        raise Conflict("this agent has no state directory, so it cannot pair with consoles")
    return identity


async def pair(request: web.Request) -> web.Response:
    """A console enrols: it proves it knows the pairing code and hands over its secret."""
    identity = _identity(request)
    if not request.secure:
        raise Conflict("pairing needs TLS: run `domus-agent init` and restart the agent")
    body = await _model_body(request, PairRequest)
    console_id = identity.pair(proof=body.proof, secret=body.secret, label=body.console)
    log.warning("paired with console %s (%s) from %s", console_id, body.console, request.remote)
    result = PairResult(
        console_id=console_id,
        fingerprint=identity.fingerprint(),
        hostname=socket.gethostname(),
        agent_version=__version__,
    )
    return model_response(result, status=201)


async def unpair(request: web.Request) -> web.Response:
    """The calling console forgets this host: its secret stops working at once."""
    _identity(request).forget(request[CONSOLE_ID])
    log.warning("console %s unpaired", request[CONSOLE_ID])
    return web.json_response({"forgotten": True})


async def rotate(request: web.Request) -> web.Response:
    body = await _model_body(request, RotateRequest)
    _identity(request).rotate(request[CONSOLE_ID], body.secret)
    log.warning("console %s rotated its secret", request[CONSOLE_ID])
    return web.json_response({"rotated": True})


async def list_domains(request: web.Request) -> web.Response:
    domains = await request.app[RUNTIME].domains.list()
    return web.Response(body=DOMAIN_LIST.dump_json(domains), content_type="application/json")


async def get_domain(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].domains.get(_uuid(request)))


async def define_domain(request: web.Request) -> web.Response:
    spec = await _model_body(request, DomainSpec)
    info, created = await request.app[RUNTIME].domains.define(spec)
    return model_response(info, status=201 if created else 200)


async def start_domain(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].domains.start(_uuid(request)))


async def shutdown_domain(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].domains.shutdown(_uuid(request)))


async def suspend_domain(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].domains.suspend(_uuid(request)))


async def resume_domain(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].domains.resume(_uuid(request)))


async def reboot_domain(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].domains.reboot(_uuid(request)))


async def autostart_domain(request: web.Request) -> web.Response:
    enabled = _bool_param(request, "enabled")
    return model_response(await request.app[RUNTIME].domains.set_autostart(_uuid(request), enabled))


async def domain_resources(request: web.Request) -> web.Response:
    body = await _model_body(request, ResourcesRequest)
    return model_response(await request.app[RUNTIME].domains.set_resources(_uuid(request), body))


async def rename_domain(request: web.Request) -> web.Response:
    body = await _model_body(request, RenameRequest)
    return model_response(await request.app[RUNTIME].domains.rename(_uuid(request), body.name))


async def destroy_domain(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].domains.destroy(_uuid(request)))


async def delete_domain(request: web.Request) -> web.Response:
    delete_disks = _bool_param(request, "delete_disks")
    keep = frozenset(request.query.getall("keep", []))  # disks the console says are not its to delete
    result = await request.app[RUNTIME].domains.delete(_uuid(request), delete_disks=delete_disks, keep=keep)
    return model_response(result)


def _target(request: web.Request) -> str:
    raw = request.match_info["target"]
    if not DISK_TARGET_RE.match(raw):
        raise NotFound(f"no disk {raw!r} (a target is a name such as vdb or hdc)")
    return raw


async def attach_disk(request: web.Request) -> web.Response:
    domain_uuid = _uuid(request)
    body = await _model_body(request, DiskAttachRequest)
    return model_response(await request.app[RUNTIME].domains.attach_disk(domain_uuid, body), status=201)


async def detach_disk(request: web.Request) -> web.Response:
    domain_uuid, target = _uuid(request), _target(request)
    return model_response(await request.app[RUNTIME].domains.detach_disk(domain_uuid, target))


async def change_media(request: web.Request) -> web.Response:
    domain_uuid, target = _uuid(request), _target(request)
    body = await _model_body(request, MediaRequest)
    return model_response(await request.app[RUNTIME].domains.change_media(domain_uuid, target, body.path))


def _mac(request: web.Request) -> str:
    raw = request.match_info["mac"]
    if not MAC_RE.match(raw):
        raise NotFound(f"no network card {raw!r} (a card is named by its MAC, such as 52:54:00:12:34:56)")
    return raw.lower()


async def attach_nic(request: web.Request) -> web.Response:
    domain_uuid = _uuid(request)
    body = await _model_body(request, NicAttachRequest)
    return model_response(await request.app[RUNTIME].domains.attach_nic(domain_uuid, body), status=201)


async def detach_nic(request: web.Request) -> web.Response:
    domain_uuid, mac = _uuid(request), _mac(request)
    return model_response(await request.app[RUNTIME].domains.detach_nic(domain_uuid, mac))


async def change_nic(request: web.Request) -> web.Response:
    domain_uuid, mac = _uuid(request), _mac(request)
    body = await _model_body(request, NicChangeRequest)
    return model_response(await request.app[RUNTIME].domains.change_nic(domain_uuid, mac, body))


async def define_pool(request: web.Request) -> web.Response:
    spec = await _model_body(request, PoolSpec)
    result, created = await request.app[RUNTIME].pools.define(spec)
    return model_response(result, status=201 if created else 200)


async def start_pool(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].pools.start(_pool_name(request)))


async def stop_pool(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].pools.stop(_pool_name(request)))


async def refresh_pool(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].pools.refresh(_pool_name(request)))


async def autostart_pool(request: web.Request) -> web.Response:
    name = _pool_name(request)
    body = await _model_body(request, PoolAutostartRequest)
    return model_response(await request.app[RUNTIME].pools.set_autostart(name, body.autostart))


async def delete_pool(request: web.Request) -> web.Response:
    """A POST with a body rather than a DELETE (whose body intermediaries may drop): keyed and
    replayed like every other mutation, the body included."""
    name = _pool_name(request)
    body = await _model_body(request, PoolDeleteRequest)
    return model_response(await request.app[RUNTIME].pools.delete(name, delete_storage=body.delete_storage))


# -- virtual networks ----------------------------------------------------------------------------
async def define_network(request: web.Request) -> web.Response:
    spec = await _model_body(request, NetworkSpec)
    result, created = await request.app[RUNTIME].networks.define(spec)
    return model_response(result, status=201 if created else 200)


async def start_network(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].networks.start(_network_name(request)))


async def stop_network(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].networks.stop(_network_name(request)))


async def autostart_network(request: web.Request) -> web.Response:
    name = _network_name(request)
    body = await _model_body(request, NetworkAutostartRequest)
    return model_response(await request.app[RUNTIME].networks.set_autostart(name, body.autostart))


async def network_dhcp(request: web.Request) -> web.Response:
    """The whole DHCP part (range and static hosts) as it is to be: what is not listed goes."""
    name = _network_name(request)
    body = await _model_body(request, DhcpSettings)
    return model_response(await request.app[RUNTIME].networks.update_dhcp(name, body))


async def delete_network(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].networks.delete(_network_name(request)))


# -- the volumes of a pool ---------------------------------------------------------------------
def _volume_name(request: web.Request) -> str:
    raw = request.match_info["volume"]
    if not VOLUME_REF_RE.match(raw):
        raise NotFound(f"no volume {raw!r} (not a valid volume name)")
    return raw


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return default
    if len(raw) > 12 or not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidSpec(f"{name}: expected a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


async def list_volumes(request: web.Request) -> web.Response:
    name = _pool_name(request)
    limit = _int_param(request, "limit", VOLUME_PAGE_DEFAULT, 1, VOLUME_PAGE_MAX)
    offset = _int_param(request, "offset", 0, 0, 2**31)
    return model_response(await request.app[RUNTIME].volumes.list(name, limit=limit, offset=offset))


async def create_volume(request: web.Request) -> web.Response:
    name = _pool_name(request)
    body = await _model_body(request, VolumeCreateRequest)
    result, created = await request.app[RUNTIME].volumes.create(name, body)
    return model_response(result, status=201 if created else 200)


async def resize_volume(request: web.Request) -> web.Response:
    pool, name = _pool_name(request), _volume_name(request)
    body = await _model_body(request, VolumeResizeRequest)
    return model_response(await request.app[RUNTIME].volumes.resize(pool, name, body.capacity_bytes))


async def clone_volume(request: web.Request) -> web.Response:
    pool, name = _pool_name(request), _volume_name(request)
    body = await _model_body(request, VolumeCloneRequest)
    return model_response(await request.app[RUNTIME].volumes.clone(pool, name, body.name), status=201)


async def delete_volume(request: web.Request) -> web.Response:
    pool, name = _pool_name(request), _volume_name(request)
    return model_response(await request.app[RUNTIME].volumes.delete(pool, name))


async def download_volume(request: web.Request) -> web.StreamResponse:
    """A volume's bytes: all of them (200), or the one range asked (206) to resume a download."""
    pool, name = _pool_name(request), _volume_name(request)
    download = await request.app[RUNTIME].volumes.open_download(pool, name)
    try:
        return await _send_volume(request, download)
    finally:
        await download.close()


def _download_headers(download: VolumeDownload) -> dict[str, str]:
    plain = re.sub(r"[^A-Za-z0-9._+-]", "_", download.name)  # for clients that ignore filename*
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": (
            f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(download.name, safe='')}"
        ),
        "Accept-Ranges": "bytes",
    }
    if download.etag is not None:
        headers["ETag"] = download.etag
    if download.last_modified is not None:
        headers["Last-Modified"] = download.last_modified
    return headers


async def _send_volume(request: web.Request, download: VolumeDownload) -> web.StreamResponse:
    asked = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range not in (download.etag, download.last_modified):
        asked = None  # the volume changed since the part the client holds: all of it again
    try:
        part = byte_range(asked, download.size)
    except RangeNotSatisfiable as err:
        refused = problem_response(err.status, err.code, err.detail)
        refused.headers["Content-Range"] = f"bytes */{download.size}"
        return refused
    start, length = part or (0, download.size)
    response = web.StreamResponse(status=206 if part else 200, headers=_download_headers(download))
    if part:
        response.headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{download.size}"
    response.content_length = length
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    try:
        async with contextlib.aclosing(download.chunks(start, length)) as chunks:
            async for chunk in chunks:
                await response.write(chunk)
    except ConnectionError:
        log.info("download of volume %s stopped: the client went away", download.name)
        return response
    except (AgentProblem, OSError) as err:
        # The status line is out: cut the connection, so the client sees a short body, not a whole one.
        log.warning("download of volume %s failed after it began: %s", download.name, err)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


# -- uploads and fetches into a pool -----------------------------------------------------------
def _upload_id(request: web.Request) -> str:
    raw = request.match_info["upload"]
    if not UPLOAD_ID_RE.match(raw):
        raise NotFound(f"no upload {raw!r} (an upload id is 32 lowercase hex digits)")
    return raw


def _upload_offset(request: web.Request) -> int:
    raw = request.headers.get(OFFSET_HEADER, "")
    if not raw or len(raw) > 19 or not raw.isascii() or not raw.isdigit():
        raise InvalidSpec(f"{OFFSET_HEADER}: a whole number of bytes is required, got {raw!r}")
    return int(raw)


async def create_upload(request: web.Request) -> web.Response:
    name = _pool_name(request)
    body = await _model_body(request, UploadCreateRequest)
    status, created = await request.app[RUNTIME].uploads.create(name, body)
    return model_response(status, status=201 if created else 200)


async def upload_status(request: web.Request) -> web.Response:
    return model_response(await request.app[RUNTIME].uploads.status(_pool_name(request), _upload_id(request)))


async def upload_piece(request: web.Request) -> web.Response:
    """Bytes of an upload from `Upload-Offset`, written as they arrive (a chunked body, or one
    with a Content-Length); the upload as it stands after them."""
    pool, upload_id, offset = _pool_name(request), _upload_id(request), _upload_offset(request)
    status = await request.app[RUNTIME].uploads.append(
        pool, upload_id, offset, request.content, request.content_length
    )
    return model_response(status)


async def delete_upload(request: web.Request) -> web.Response:
    await request.app[RUNTIME].uploads.delete(_pool_name(request), _upload_id(request))
    return web.Response(status=204)


async def fetch_into_pool(request: web.Request) -> web.Response:
    name = _pool_name(request)
    body = await _model_body(request, FetchRequest)
    status, created = await request.app[RUNTIME].uploads.fetch(name, body)
    return model_response(status, status=202 if created else 200)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/host", host)
    app.router.add_post("/v1/pair", pair)
    app.router.add_delete("/v1/pair", unpair)
    app.router.add_post("/v1/pair/rotate", rotate)
    app.router.add_get("/v1/domains", list_domains)
    app.router.add_post("/v1/domains", define_domain)
    app.router.add_get("/v1/domains/{uuid}", get_domain)
    app.router.add_delete("/v1/domains/{uuid}", delete_domain)
    app.router.add_post("/v1/domains/{uuid}/start", start_domain)
    app.router.add_post("/v1/domains/{uuid}/shutdown", shutdown_domain)
    app.router.add_post("/v1/domains/{uuid}/destroy", destroy_domain)
    app.router.add_post("/v1/domains/{uuid}/suspend", suspend_domain)
    app.router.add_post("/v1/domains/{uuid}/resume", resume_domain)
    app.router.add_post("/v1/domains/{uuid}/reboot", reboot_domain)
    app.router.add_post("/v1/domains/{uuid}/autostart", autostart_domain)
    app.router.add_post("/v1/domains/{uuid}/resources", domain_resources)
    app.router.add_post("/v1/domains/{uuid}/rename", rename_domain)
    app.router.add_post("/v1/domains/{uuid}/disks", attach_disk)
    app.router.add_post("/v1/domains/{uuid}/disks/{target}/detach", detach_disk)
    app.router.add_post("/v1/domains/{uuid}/disks/{target}/media", change_media)
    app.router.add_post("/v1/domains/{uuid}/nics", attach_nic)
    app.router.add_post("/v1/domains/{uuid}/nics/{mac}/detach", detach_nic)
    app.router.add_patch("/v1/domains/{uuid}/nics/{mac}", change_nic)
    app.router.add_post("/v1/pools", define_pool)
    app.router.add_post("/v1/pools/{name}/start", start_pool)
    app.router.add_post("/v1/pools/{name}/stop", stop_pool)
    app.router.add_post("/v1/pools/{name}/refresh", refresh_pool)
    app.router.add_post("/v1/pools/{name}/autostart", autostart_pool)
    app.router.add_post("/v1/pools/{name}/delete", delete_pool)
    app.router.add_get("/v1/pools/{name}/volumes", list_volumes)
    app.router.add_post("/v1/pools/{name}/volumes", create_volume)
    app.router.add_post("/v1/pools/{name}/volumes/{volume}/resize", resize_volume)
    app.router.add_post("/v1/pools/{name}/volumes/{volume}/clone", clone_volume)
    app.router.add_post("/v1/pools/{name}/volumes/{volume}/delete", delete_volume)
    app.router.add_get("/v1/pools/{name}/volumes/{volume}/download", download_volume)
    app.router.add_post("/v1/pools/{name}/uploads", create_upload)
    app.router.add_get("/v1/pools/{name}/uploads/{upload}", upload_status)
    app.router.add_patch("/v1/pools/{name}/uploads/{upload}", upload_piece, name="upload-piece")
    app.router.add_delete("/v1/pools/{name}/uploads/{upload}", delete_upload)
    app.router.add_post("/v1/pools/{name}/fetches", fetch_into_pool)
    app.router.add_post("/v1/networks", define_network)
    app.router.add_post("/v1/networks/{name}/start", start_network)
    app.router.add_post("/v1/networks/{name}/stop", stop_network)
    app.router.add_post("/v1/networks/{name}/autostart", autostart_network)
    app.router.add_put("/v1/networks/{name}/dhcp", network_dhcp)
    app.router.add_delete("/v1/networks/{name}", delete_network)
