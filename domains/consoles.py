"""Console tickets: single use, short-lived, bound to a user, a domain and a kind; stored hashed."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from console.access.models import hash_key
from console.access.policy import has_perm
from console.errors import Conflict, InvalidInput, PermissionDenied
from domains.models import ConsoleTicket, Domain


class TicketRefused(Exception):
    """The ticket cannot open a console; the message says why (sent as the close reason)."""


@transaction.atomic
def console_ticket_issue(*, user: Any, domain: Domain, kind: str) -> tuple[ConsoleTicket, str]:
    if kind not in ConsoleTicket.Kind.values:
        raise InvalidInput(
            f"Unknown console kind {kind!r}.",
            fields={"kind": [f"must be one of: {', '.join(ConsoleTicket.Kind.values)}"]},
        )
    if not has_perm(user, "domain.console.interact", domain):
        raise PermissionDenied("You may not open this domain's console.")
    if domain.state != Domain.State.RUNNING:
        raise Conflict(f"{domain.name} is {domain.get_state_display().lower()}: start it first.")
    key = secrets.token_urlsafe(32)
    ticket = ConsoleTicket.objects.create(
        key_hash=hash_key(key),
        user=user,
        domain=domain,
        kind=kind,
        expires_at=timezone.now() + timedelta(seconds=settings.DOMUS_CONSOLE_TICKET_TTL_SECONDS),
    )
    return ticket, key


@transaction.atomic
def console_ticket_redeem(*, key: str, user: Any) -> ConsoleTicket:
    """Spend a ticket. `user` is the WebSocket's session user (anonymous for API clients, which
    hold only the ticket); a logged-in browser may only spend its own tickets."""
    now = timezone.now()
    ticket = (
        ConsoleTicket.objects.select_for_update()
        .select_related("domain__host", "user")
        .filter(key_hash=hash_key(key))
        .first()
    )
    if ticket is None:
        raise TicketRefused("unknown ticket")
    if ticket.used_at is not None:
        raise TicketRefused("ticket already used")
    ticket.used_at = now
    ticket.save(update_fields=["used_at"])
    if ticket.expires_at <= now:
        raise TicketRefused("ticket expired")
    if getattr(user, "is_authenticated", False) and user.pk != ticket.user_id:
        raise TicketRefused("ticket belongs to another user")
    if not has_perm(ticket.user, "domain.console.interact", ticket.domain):
        raise TicketRefused("permission to this console was withdrawn")
    return ticket
