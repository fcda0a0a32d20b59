"""Enrolment and trust: adding a host with a pairing code, rotating its secret, removing it.

These services talk to the agent while the operator waits (they must say at once whether the code
was right); they hold no database transaction open across the network call.

Pairing, step by step:
1. Connect over TLS and read the certificate the agent presents (its SHA-256 fingerprint). If the
   operator typed the fingerprint `domus-agent init` printed, it must match.
2. Send HMAC(pairing code, that fingerprint) and a new random secret, over TLS pinned to that
   same fingerprint. The agent checks the proof against its own certificate, so a relay in the
   middle (which shows a different certificate) fails, and the code itself never travels.
3. Store the host with the pinned fingerprint and the secret. Every later call is pinned TLS
   plus that secret.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from django.db import IntegrityError, transaction

from agent.client import (
    AgentClient,
    AgentError,
    AgentIdentityChanged,
    AgentRefused,
    AgentUnauthorized,
    AgentUnreachable,
    fetch_fingerprint,
)
from agent.protocol import (
    PAIRING_CODE_RE,
    PairRequest,
    PairResult,
    format_fingerprint,
    normalise_fingerprint,
    normalise_pairing_code,
    pairing_proof,
)
from console.audit.services import Origin, audit_record
from console.errors import Conflict, InvalidInput
from console.realtime.events import publish_on_commit
from hosts.agent import agent_client, run_agent
from hosts.events import host_event, host_removed_event
from hosts.models import Host
from hosts.services import agent_url_problem, is_loopback_url, require_host_manage

ENROL_TIMEOUT_SECONDS = 15.0
SECRET_BYTES = 32  # 256 bits, sent as url-safe base64


def _pairing_error(err: AgentError, *, field: str = "pairing_code") -> InvalidInput:
    return InvalidInput(f"The agent refused the pairing: {err.detail}", fields={field: [err.detail]})


def host_enrol(
    *,
    name: str,
    url: str,
    pairing_code: str,
    fingerprint: str = "",
    actor: Any = None,
    origin: Origin | None = None,
) -> Host:
    """Add a host whose agent printed `pairing_code` (see `domus-agent init`)."""
    require_host_manage(actor)
    url = url.rstrip("/")
    if not url.startswith("https://"):
        why = "pairing needs https:// (the agent serves TLS once `domus-agent init` has run)"
        if is_loopback_url(url):
            why += "; a loopback agent without TLS is added with its fixed secret instead"
        raise InvalidInput("Pairing needs TLS.", fields={"url": [why]})
    if problem := agent_url_problem(url):
        raise InvalidInput("Unsafe agent URL.", fields={"url": [problem]})
    code = normalise_pairing_code(pairing_code)
    if not PAIRING_CODE_RE.match(code):
        raise InvalidInput(
            "Malformed pairing code.",
            fields={"pairing_code": ["looks like XXXX-XXXX-XXXX (12 letters and digits)"]},
        )
    expected = normalise_fingerprint(fingerprint) if fingerprint else ""
    if expected and (len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)):
        raise InvalidInput(
            "Malformed fingerprint.", fields={"fingerprint": ["a SHA-256 fingerprint: 64 hex digits"]}
        )
    if Host.objects.filter(name=name).exists():
        raise Conflict(f"A host named {name!r} exists already.", fields={"name": ["already in use"]})

    try:
        seen = asyncio.run(fetch_fingerprint(url, timeout=ENROL_TIMEOUT_SECONDS))
    except AgentUnreachable as err:
        raise InvalidInput(f"Cannot reach the agent: {err.detail}", fields={"url": [err.detail]}) from err
    if expected and seen != expected:
        detail = (
            f"the agent presents {format_fingerprint(seen)}, not {format_fingerprint(expected)}: "
            "this is not the agent you initialised, or something is intercepting the connection"
        )
        raise InvalidInput("TLS certificate mismatch.", fields={"fingerprint": [detail]})

    secret = secrets.token_urlsafe(SECRET_BYTES)
    request = PairRequest(proof=pairing_proof(code, seen), secret=secret, console=f"domus {name}")
    try:
        result = asyncio.run(_pair(url, seen, request))
    except AgentIdentityChanged as err:  # the certificate changed between two connections
        raise InvalidInput("TLS certificate mismatch.", fields={"fingerprint": [err.detail]}) from err
    except AgentUnreachable as err:
        raise InvalidInput(f"Cannot reach the agent: {err.detail}", fields={"url": [err.detail]}) from err
    except AgentRefused as err:
        raise _pairing_error(err) from err
    except AgentError as err:
        raise _pairing_error(err, field="url") from err

    try:
        with transaction.atomic():
            host = Host.objects.create(name=name, url=url, secret=secret, fingerprint=seen)
            publish_on_commit(host_event(host))
            changes = {
                "url": url,
                "fingerprint": seen,
                "agent_hostname": result.hostname,
                "agent_version": result.agent_version,
            }
            audit_record(action="host.enrol", actor=actor, origin=origin, obj=host, changes=changes)
    except IntegrityError as err:  # added under the same name meanwhile; undo the pairing
        asyncio.run(_unpair_quietly(url, seen, secret))
        raise Conflict(f"A host named {name!r} exists already.", fields={"name": ["already in use"]}) from err
    return host


async def _pair(url: str, fingerprint: str, request: PairRequest) -> PairResult:
    async with AgentClient(url, "", fingerprint=fingerprint, timeout=ENROL_TIMEOUT_SECONDS) as client:
        return await client.pair(request)


async def _unpair_quietly(url: str, fingerprint: str, secret: str) -> None:
    try:
        async with AgentClient(url, secret, fingerprint=fingerprint, timeout=ENROL_TIMEOUT_SECONDS) as client:
            await client.unpair()
    except AgentError:
        pass


def host_rotate_secret(*, host: Host, actor: Any = None, origin: Origin | None = None) -> Host:
    """Give the agent a new secret. The agent keeps accepting the old one until the new one is
    first used, so a failure between its answer and our save locks nobody out."""
    require_host_manage(actor)
    if not host.fingerprint:
        raise Conflict(
            "This host's agent uses a fixed secret from its command line (a loopback agent "
            "without TLS): change it there."
        )
    new_secret = secrets.token_urlsafe(SECRET_BYTES)

    async def rotate() -> None:
        async with agent_client(host, timeout=ENROL_TIMEOUT_SECONDS) as client:
            await client.rotate(new_secret)
        async with AgentClient(
            host.url, new_secret, fingerprint=host.fingerprint, timeout=ENROL_TIMEOUT_SECONDS
        ) as client:
            await client.host()  # first use of the new secret retires the old one

    try:
        asyncio.run(rotate())
    except AgentError as err:
        raise Conflict(f"The agent did not take the new secret: {err.detail}") from err
    with transaction.atomic():
        Host.objects.filter(pk=host.pk).update(secret=new_secret)
        host.secret = new_secret
        audit_record(
            action="host.rotate_secret", actor=actor, origin=origin, obj=host, changes={"secret": "(rotated)"}
        )
    return host


def host_remove(
    *, host: Host, force: bool = False, actor: Any = None, origin: Origin | None = None
) -> dict[str, Any]:
    """Forget a host: the agent forgets our secret, and the console forgets the host and its
    domain records. The domains themselves keep running on the host, untouched."""
    require_host_manage(actor)
    agent_forgot = False
    problem = ""
    if host.fingerprint:
        try:
            run_agent(host, lambda client: client.unpair(), timeout=ENROL_TIMEOUT_SECONDS)
            agent_forgot = True
        except AgentUnauthorized:
            agent_forgot = True  # it does not know us any more: the goal
        except AgentError as err:
            problem = err.detail
            if not force:
                raise Conflict(
                    f"The agent could not be told to forget this console ({err.detail}). Remove "
                    "with force to forget the host anyway; then run `domus-agent forget-consoles` "
                    "on the host so the old secret stops working.",
                    fields={"force": ["needed while the agent cannot be reached"]},
                ) from err
    from domains.models import Domain  # domains depends on hosts, not the other way round

    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host.pk)
        domains = list(Domain.objects.filter(host=host).values_list("name", flat=True))
        Domain.objects.filter(host=host).delete()
        event = host_removed_event(host)
        changes = {
            "url": host.url,
            "forgotten_domains": domains,
            "agent_forgot_secret": agent_forgot,
            "forced": bool(problem),
            "agent_problem": problem,
        }
        audit_record(action="host.remove", actor=actor, origin=origin, obj=host, changes=changes)
        host.delete()
        publish_on_commit(event)
    return {"forgotten_domains": domains, "agent_forgot_secret": agent_forgot}
