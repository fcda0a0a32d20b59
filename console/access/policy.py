"""The one access layer: every page, API view, WebSocket consumer, job and selector asks here.

A user holds roles on scopes: the site, a team (a membership, or a grant), a host, one domain.
A permission held on a scope reaches:
- site: everything;
- team: the team itself, its domains (and their jobs), and the hosts it may use (shared hosts,
  or hosts reserved to it) — except NOT_FROM_TEAMS, which need a site or host grant;
- host: the host and every domain on it;
- domain: that domain.
Superusers hold every permission on the site (that is how `make run`'s admin starts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.db.models import Model, Q, QuerySet

from console.access.models import Grant, Membership, Team
from console.access.permissions import NOT_FROM_TEAMS, PERMISSIONS

M = TypeVar("M", bound=Model)


class UnknownPermission(ValueError):
    pass


@dataclass
class Reach:
    """Where one user holds one permission."""

    site: bool = False
    teams: set[int] = field(default_factory=set)
    hosts: set[int] = field(default_factory=set)
    domains: set[int] = field(default_factory=set)

    @property
    def anywhere(self) -> bool:
        return self.site or bool(self.teams or self.hosts or self.domains)

    def reaches_domain(self, domain_id: int, host_id: int, team_id: int | None) -> bool:
        return (
            self.site
            or domain_id in self.domains
            or host_id in self.hosts
            or (team_id is not None and team_id in self.teams)
        )

    def reaches_host(self, host_id: int, reserved_to: set[int]) -> bool:
        """`reserved_to`: the teams the host is reserved to (empty: shared by the site)."""
        if self.site or host_id in self.hosts:
            return True
        return bool(self.teams) and (not reserved_to or bool(reserved_to & self.teams))


def is_signed_in(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False) and user.is_active)


_active = is_signed_in


def reach(user: Any, action: str) -> Reach:
    if action not in PERMISSIONS:
        raise UnknownPermission(action)
    result = Reach()
    if not _active(user):
        return result
    limit = getattr(user, "_domus_token_permissions", None)  # a token narrowed to some permissions
    if limit is not None and action not in limit:
        return result
    if user.is_superuser:
        result.site = True
        return result
    for grant in Grant.objects.filter(user=user).select_related("role"):
        if action not in grant.role.permissions:
            continue
        if grant.scope == Grant.Scope.SITE:
            result.site = True
        elif grant.scope == Grant.Scope.TEAM and action not in NOT_FROM_TEAMS:
            result.teams.add(grant.team_id)  # type: ignore[arg-type]
        elif grant.scope == Grant.Scope.HOST:
            result.hosts.add(grant.host_id)  # type: ignore[arg-type]
        elif grant.scope == Grant.Scope.DOMAIN and action not in NOT_FROM_TEAMS:
            result.domains.add(grant.domain_id)  # type: ignore[arg-type]
    if action not in NOT_FROM_TEAMS:
        for membership in Membership.objects.filter(user=user).select_related("role"):
            if action in membership.role.permissions:
                result.teams.add(membership.team_id)
    return result


def has_perm(user: Any, action: str, obj: Model | None = None) -> bool:
    """Whether `user` may do `action` on `obj` (or somewhere at all, when obj is None)."""
    r = reach(user, action)
    if r.site:
        return True
    if obj is None:
        return r.anywhere
    return _reaches(r, obj)


def has_site_perm(user: Any, action: str) -> bool:
    """Whether `user` holds `action` on the whole site (e.g. adding hosts, reading all audit)."""
    return reach(user, action).site


def _reaches(r: Reach, obj: Model) -> bool:
    from console.jobs.models import Job
    from domains.models import Domain
    from hosts.models import Host

    if isinstance(obj, Domain):
        return r.reaches_domain(obj.pk, obj.host_id, obj.team_id)
    if isinstance(obj, Host):
        return r.reaches_host(obj.pk, set(obj.teams.values_list("pk", flat=True)))
    if isinstance(obj, Team):
        return obj.pk in r.teams
    if isinstance(obj, Job):
        if obj.domain is not None:
            return _reaches(r, obj.domain)
        return obj.host is not None and obj.host_id in r.hosts
    return False


def restrict(queryset: QuerySet[M], user: Any, action: str) -> QuerySet[M]:
    """`queryset` narrowed to the objects on which `user` may do `action`."""
    from console.jobs.models import Job
    from domains.models import Domain
    from hosts.models import Host

    r = reach(user, action)
    if r.site:
        return queryset
    model = queryset.model
    if model is Domain:
        return queryset.filter(_domain_q(r, ""))
    if model is Host:
        q = Q(pk__in=r.hosts)
        if r.teams:
            q |= Q(teams__isnull=True) | Q(teams__in=r.teams)
        return queryset.filter(q).distinct()
    if model is Team:
        return queryset.filter(pk__in=r.teams)
    if model is Job:
        q = Q(domain__isnull=False) & _domain_q(r, "domain__")
        q |= Q(domain__isnull=True, host__in=r.hosts)
        if _active(user):
            q |= Q(domain__isnull=True, actor=user)  # one's own jobs on since-deleted domains
        return queryset.filter(q)
    return queryset.none()


def _domain_q(r: Reach, prefix: str) -> Q:
    return (
        Q(**{f"{prefix}pk__in": r.domains})
        | Q(**{f"{prefix}host__in": r.hosts})
        | Q(**{f"{prefix}team__in": r.teams})
    )


def explain(user: Any, action: str, obj: Model | None = None) -> str:
    """Why `user` may not do `action` on `obj`: which permission is missing, on which scopes."""
    from domains.models import Domain
    from hosts.models import Host

    what = PERMISSIONS.get(action, action)
    if not _active(user):
        return "Sign in first."
    limit = getattr(user, "_domus_token_permissions", None)
    if limit is not None and action not in limit:
        return f"This API token is not allowed {action!r} ({what.lower()})."
    if isinstance(obj, Domain):
        places = [f"the domain {obj.name!r}", f"its host {obj.host.name!r}"]
        if obj.team is not None:
            places.append(f"its team {obj.team.name!r}")
        where = ", ".join(places) + " or the site"
    elif isinstance(obj, Host):
        where = f"the host {obj.name!r} or the site" + (
            "" if action in NOT_FROM_TEAMS else " (or a team using it)"
        )
    elif isinstance(obj, Team):
        where = f"the team {obj.name!r} or the site"
    else:
        where = "any scope" if action not in NOT_FROM_TEAMS else "the site"
    return f"You need the permission {action!r} ({what.lower()}) on {where}."
