"""HTTP side of the agent: middlewares (request log, auth, problem bodies) and JSON routes."""

from __future__ import annotations

import json
import logging
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
from agent.errors import AgentProblem, Conflict, InvalidSpec, NotFound, Unauthorized
from agent.identity import AgentIdentity, ConsoleKeys
from agent.protocol import (
    PROBLEM_HEADER,
    DomainInfo,
    DomainSpec,
    PairRequest,
    PairResult,
    Problem,
    RenameRequest,
    ResourcesRequest,
    RotateRequest,
)
from agent.runtime import AgentRuntime

log = logging.getLogger("agent.http")

RUNTIME: web.AppKey[AgentRuntime] = web.AppKey("runtime", AgentRuntime)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({("GET", "/v1/health"), ("POST", "/v1/pair")})
DOMAIN_LIST = TypeAdapter(list[DomainInfo])
CONSOLE_ID = web.RequestKey("console_id", str)  # which paired console is calling


def problem_response(status: int, code: str, detail: str) -> web.Response:
    body = Problem(error=code, detail=detail).model_dump_json()
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
        return problem_response(err.status, err.code, err.detail)
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
