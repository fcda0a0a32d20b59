from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.paginator import Page, Paginator
from django.db.models import Count, Max, Q, QuerySet
from django.utils.functional import cached_property

from console.access.policy import restrict
from console.errors import InvalidInput, NotFound
from console.jobs.models import Job
from console.params import MAX_ID, id_param, whole_number
from domains.models import Domain, Volume
from domains.volumes import seen_q
from hosts.selectors import host_list

# ?ordering= names and the columns behind them. Every ordering ends on a unique column, so that
# pages (LIMIT/OFFSET) neither repeat nor skip a row; "-x" is exactly the reverse of "x" (every
# column descending), which one index read backwards serves (see the migration 0004).
ORDERINGS: dict[str, tuple[str, ...]] = {
    "name": ("name", "id"),
    "state": ("state", "name", "id"),
    "host": ("host__name", "name", "id"),
    "memory_mib": ("memory_mib", "name", "id"),
    "vcpus": ("vcpus", "name", "id"),
    "created_at": ("created_at", "id"),
    "address": ("address_sort", "name", "id"),  # the first IPv4 address; none first
}
ORDERING_CHOICES = [f"{sign}{name}" for name in ORDERINGS for sign in ("", "-")]
# What a list shows of each domain (the API's DomainSerializer, the overview's rows): the host's
# name, not its facts and stats, which are large JSON documents the database would send per row.
LIST_FIELDS = (
    "uuid",
    "name",
    "host",
    "host__name",
    "team",
    "vcpus",
    "memory_mib",
    "state",
    "failure",
    "disks",
    "nics",
    "addresses",
    "autostart",
    "spec",
    "created_at",
    "updated_at",
)
Q_MAX_LENGTH = 63  # a domain name is never longer, nor an IPv6 address


@dataclass(frozen=True)
class DomainFilter:
    """Which domains a list shows and in which order (the API's and the overview's parameters)."""

    ordering: str = "name"
    host: int | None = None
    team: int | None = None
    state: str = ""
    q: str = ""  # part of the name (any case) or of an address

    @property
    def order_by(self) -> tuple[str, ...]:
        columns = ORDERINGS[self.ordering.removeprefix("-")]
        return tuple(f"-{c}" for c in columns) if self.ordering.startswith("-") else columns

    def as_params(self, **changes: str) -> dict[str, str]:
        """Query parameters that reproduce this filter, without the defaults (for links)."""
        params = {
            "ordering": self.ordering,
            "host": "" if self.host is None else str(self.host),
            "team": "" if self.team is None else str(self.team),
            "state": self.state,
            "q": self.q,
            **changes,
        }
        if params["ordering"] == "name":
            del params["ordering"]
        return {key: value for key, value in params.items() if value}


def domain_filter_parse(params: Mapping[str, str]) -> DomainFilter:
    """Build a filter from query parameters: ordering, host, team, state, q. Anything invalid is
    an InvalidInput naming each bad parameter and what it accepts."""
    errors: dict[str, list[str]] = {}
    ordering = (params.get("ordering") or "").strip() or "name"
    if ordering not in ORDERING_CHOICES:
        errors["ordering"] = [f"unknown ordering {ordering[:40]!r}: one of {', '.join(ORDERING_CHOICES)}"]
    host = id_param(params, "host", errors)
    team = id_param(params, "team", errors)
    state = (params.get("state") or "").strip()
    if state and state not in Domain.State.values:
        errors["state"] = [f"unknown state {state[:40]!r}: one of {', '.join(Domain.State.values)}"]
    q = (params.get("q") or "").strip()
    if len(q) > Q_MAX_LENGTH:
        errors["q"] = [f"at most {Q_MAX_LENGTH} characters (a domain name is never longer)"]
    if errors:
        raise InvalidInput(f"Invalid {', '.join(errors)}.", fields=errors)
    return DomainFilter(ordering=ordering, host=host, team=team, state=state, q=q)


def domain_list(*, user: Any) -> QuerySet[Domain]:
    return restrict(Domain.objects.select_related("host"), user, "domain.view")


def domain_search(*, user: Any, filters: DomainFilter) -> QuerySet[Domain]:
    """The domains `user` may see that match `filters`, in their order, with the columns a list
    shows: the database filters, sorts and (sliced) pages; the host's name comes in the same query."""
    domains = domain_list(user=user).only(*LIST_FIELDS)
    if filters.host is not None:
        domains = domains.filter(host_id=filters.host)
    if filters.team is not None:
        domains = domains.filter(team_id=filters.team)
    if filters.state:
        domains = domains.filter(state=filters.state)
    if filters.q:  # "web" or "10.1.2.3": a name, or an address ("which guest has 10.1.2.3?")
        domains = domains.filter(Q(name__icontains=filters.q) | Q(address_text__icontains=filters.q))
    return domains.order_by(*filters.order_by)


if TYPE_CHECKING:
    _DomainPaginator = Paginator[Domain]
else:  # Paginator is generic only in the type stubs
    _DomainPaginator = Paginator


class _CountedPaginator(_DomainPaginator):
    """A paginator told its count (taken together with the newest id, in one query)."""

    def __init__(self, object_list: QuerySet[Domain], per_page: int, *, count: int) -> None:
        super().__init__(object_list, per_page)
        self._known_count = count

    @cached_property
    def count(self) -> int:
        return self._known_count


@dataclass(frozen=True)
class DomainPage:
    page: Page[Domain]
    newest_id: int  # the highest id among the matching domains: a live page tells new ones by it


def domain_page(*, user: Any, filters: DomainFilter, number: str | None, per_page: int) -> DomainPage:
    """One page of `domain_search`: `number` counts from 1 (past the end: the last page). Two
    queries whatever the number of domains: the count (with the newest id), then the page."""
    raw = (number or "").strip() or "1"
    wanted = whole_number(raw, least=1, most=MAX_ID)
    if wanted is None:
        raise InvalidInput("Invalid page.", fields={"page": [f"must be a page number, not {raw[:40]!r}"]})
    domains = domain_search(user=user, filters=filters)
    totals = domains.order_by().aggregate(count=Count("pk"), newest=Max("pk"))
    paginator = _CountedPaginator(domains, per_page, count=totals["count"])
    page = paginator.page(min(wanted, paginator.num_pages))
    return DomainPage(page=page, newest_id=totals["newest"] or 0)


def volume_list(*, user: Any, host_id: int | None = None) -> QuerySet[Volume]:
    """The volumes `user` may see (domains.volumes.seen_q) on the hosts they see, by host and
    path, with their owner and grants in the same few queries."""
    volumes = Volume.objects.filter(host__in=host_list(user=user))
    if host_id is not None:
        volumes = volumes.filter(host_id=host_id)
    seen = seen_q(user)
    if seen is not None:
        volumes = volumes.filter(seen)
    return (
        volumes.select_related("host", "team")
        .prefetch_related("granted_to")
        .order_by("host_id", "path", "id")
    )


def domain_get(*, user: Any, domain_id: int) -> Domain:
    domain = domain_list(user=user).filter(pk=domain_id).first()
    if domain is None:
        raise NotFound(f"No domain with id {domain_id}.")
    return domain


def domain_jobs(*, user: Any, domain: Domain, limit: int = 20) -> QuerySet[Job]:
    return restrict(Job.objects.filter(domain=domain), user, "domain.view")[:limit]
