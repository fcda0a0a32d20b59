"""Console tickets: single use, short-lived, bound to a user, a domain, a kind and a mode (view or
interact); stored hashed."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from console.access.models import hash_key
from console.access.policy import explain, has_perm
from console.errors import Conflict, InvalidInput, PermissionDenied
from domains.models import ConsoleTicket, Domain


class TicketRefused(Exception):
    """The ticket cannot open a console; the message says why (sent as the close reason)."""


def _permission(mode: str) -> str:
    return "domain.console.interact" if mode == ConsoleTicket.Mode.INTERACT else "domain.console.view"


@transaction.atomic
def console_ticket_issue(
    *, user: Any, domain: Domain, kind: str, mode: str = ConsoleTicket.Mode.INTERACT
) -> tuple[ConsoleTicket, str]:
    """A ticket to watch (`view`) or to watch and type into (`interact`) one console."""
    if kind not in ConsoleTicket.Kind.values:
        raise InvalidInput(
            f"Unknown console kind {kind!r}.",
            fields={"kind": [f"must be one of: {', '.join(ConsoleTicket.Kind.values)}"]},
        )
    if mode not in ConsoleTicket.Mode.values:
        raise InvalidInput(
            f"Unknown console mode {mode!r}.",
            fields={"mode": [f"must be one of: {', '.join(ConsoleTicket.Mode.values)}"]},
        )
    if not has_perm(user, _permission(mode), domain):
        raise PermissionDenied(explain(user, _permission(mode), domain))
    if domain.state != Domain.State.RUNNING:
        raise Conflict(f"{domain.name} is {domain.get_state_display().lower()}: start it first.")
    if kind == ConsoleTicket.Kind.VNC and not domain.may_have_display:
        raise Conflict(f"{domain.name} has no graphical console: it was created without one.")
    key = secrets.token_urlsafe(32)
    ticket = ConsoleTicket.objects.create(
        key_hash=hash_key(key),
        user=user,
        domain=domain,
        kind=kind,
        mode=mode,
        expires_at=timezone.now() + timedelta(seconds=settings.DOMUS_CONSOLE_TICKET_TTL_SECONDS),
    )
    return ticket, key


def console_ticket_redeem(*, key: str, user: Any, domain_id: str = "") -> ConsoleTicket:
    """Spend a ticket for `user`, the WebSocket's authenticated caller (session cookie or API
    token): a ticket opens a console only for the user it was issued to, never for a bearer,
    and only the console of the domain the socket names (`domain_id`, from its address).

    The ticket is spent by the first attempt, whatever its outcome, so that a refused attempt
    cannot be retried with the same ticket."""
    now = timezone.now()
    key_hash = hash_key(key)
    spent = ConsoleTicket.objects.filter(key_hash=key_hash, used_at__isnull=True).update(used_at=now)
    ticket = ConsoleTicket.objects.select_related("domain__host", "user").filter(key_hash=key_hash).first()
    if ticket is None:
        raise TicketRefused("unknown ticket")
    if not spent:
        raise TicketRefused("ticket already used")
    if ticket.expires_at <= now:
        raise TicketRefused("ticket expired")
    if not getattr(user, "is_authenticated", False):
        raise TicketRefused("sign in (session or API token) to open a console")
    if user.pk != ticket.user_id:
        raise TicketRefused("ticket belongs to another user")
    if domain_id != str(ticket.domain_id):
        raise TicketRefused("ticket is for another domain")
    if not has_perm(ticket.user, _permission(ticket.mode), ticket.domain):
        raise TicketRefused("permission to this console was withdrawn")
    return ticket


def console_still_allowed(*, ticket: ConsoleTicket) -> str:
    """Why an open console must close now for its domain ("" while it may stay): its user lost
    the permission its ticket needed. What opened it (session, token) is checked by
    console.realtime.credentials, as for every socket."""
    if not has_perm(ticket.user, _permission(ticket.mode), ticket.domain):
        return "permission to this console was withdrawn"
    return ""
