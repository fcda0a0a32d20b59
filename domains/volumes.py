"""Whose a volume is, and whether a request may name it.

Every path a spec can carry (an existing disk, a backing image, an ISO, a kernel or initrd) is
resolved to a volume of the host and checked against what the domain's team may use: its own
volumes, the site's library (read-only), or, for those who manage the host, anything. That a
path lies in one of the host's pools (domains.specs) says nothing about whose it is: a team
attached another team's disk by its path, and deleted it with the domain.

Who owns what (domains.models.Volume): the team of the domain that created a volume or was
first seen using it; files no domain used yet (an ISO or base image put in a pool by hand) are
the site's, read-only for teams. Ownership is recorded when the host reports a domain's disks.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Any

from agent.protocol import DomainSpec
from console.access.models import Team
from console.access.policy import has_perm, reach
from domains.models import Domain, Volume
from hosts.models import Host

REFUSED = "is not a volume your team may use"


def absolute(host: Host, path: str) -> str:
    """The path as the agent resolves it: a relative one is in the host's default pool."""
    if not path.startswith("/"):
        path = posixpath.join(host.default_pool_path, path)
    return posixpath.normpath(path)


def _disk_paths(domain_disks: Iterable[dict[str, Any]]) -> list[str]:
    return [d["path"] for d in domain_disks if d.get("device") == "disk" and d.get("path")]


def _spec_paths(spec: dict[str, Any]) -> list[str]:
    """The existing volumes a spec names as writable disks (a domain not yet defined)."""
    return [d["existing"] for d in spec.get("disks") or [] if isinstance(d, dict) and d.get("existing")]


def user_of(host: Host, path: str, *, besides: Domain | None = None) -> Domain | None:
    """The domain of this host (other than `besides`) that has `path` as a disk, or will have:
    a create not done yet names it in its spec."""
    others = Domain.objects.filter(host=host).only("name", "disks", "spec")
    if besides is not None and besides.pk is not None:
        others = others.exclude(pk=besides.pk)
    for other in others:
        named = _disk_paths(other.disks) + [absolute(host, p) for p in _spec_paths(other.spec)]
        if path in named:
            return other
    return None


def refusal(
    *, actor: Any, host: Host, team: Team | None, path: str, writable: bool, domain: Domain | None = None
) -> str | None:
    """Why `path` may not be used by a domain of `team` on `host` (None: it may). `writable`:
    as a disk the guest writes; else as read-only media (an ISO, a kernel, a backing image)."""
    path = absolute(host, path)
    manages = has_perm(actor, "host.manage", host)
    other = user_of(host, path, besides=domain)
    if other is not None:
        # A writable disk is one domain's; media or a base image another domain writes is no
        # better (its content changes under the reader). The other domain is named only to
        # those who may see it.
        named = other.name if has_perm(actor, "domain.view", other) else "another domain"
        return f"is a disk of {named}: a volume a domain writes is used by that domain only"
    row = Volume.objects.filter(host=host, path=path).first()
    if manages:
        return None
    if row is None:  # a pool file no domain used: the site's
        return None if not writable else f"{REFUSED} (only those who manage the host attach it)"
    if row.library:
        return None if not writable else "is in the site's library, which is read-only"
    if team is not None and row.team_id == team.pk:
        return None
    return REFUSED


def check_spec(
    *, actor: Any, host: Host, team: Team | None, spec: DomainSpec, domain: Domain | None = None
) -> dict[str, list[str]]:
    """Every path of `spec` checked (refusal); the refused ones by field."""
    uses: list[tuple[str, str, bool]] = []
    for index, disk in enumerate(spec.disks):
        if disk.existing:
            uses.append((f"disks.{index}.existing", disk.existing, True))
        if disk.backing:
            uses.append((f"disks.{index}.backing", disk.backing, False))
    if spec.boot.kind in ("iso", "kernel"):  # a network install's paths are inside its tree
        for key in ("iso", "kernel", "initrd"):
            value = getattr(spec.boot, key, None)
            if value:
                uses.append((f"boot.{key}", value, False))
    errors: dict[str, list[str]] = {}
    for field, path, writable in uses:
        why = refusal(actor=actor, host=host, team=team, path=path, writable=writable, domain=domain)
        if why:
            errors[field] = [f"{path} {why}"]
    return errors


def register_disks(domains: Iterable[Domain]) -> None:
    """Record the disks the hosts report as their domains' teams' volumes, where no one owns
    them yet (the first domain seen with a volume is the one that made it, or was given it)."""
    rows = [
        Volume(host_id=d.host_id, path=path, team_id=d.team_id, domain=d)
        for d in domains
        for path in _disk_paths(d.disks)
    ]
    if rows:
        Volume.objects.bulk_create(rows, ignore_conflicts=True)


def kept_on_delete(domain: Domain) -> list[str]:
    """The disks of `domain` a delete "with its disks" must keep: those another team owns, the
    site's library, and those another domain uses as well."""
    paths = _disk_paths(domain.disks)
    rows = {v.path: v for v in Volume.objects.filter(host_id=domain.host_id, path__in=paths)}
    keep = []
    for path in paths:
        row = rows.get(path)
        foreign = row is not None and (row.library or row.team_id != domain.team_id)
        if foreign or user_of(domain.host, path, besides=domain) is not None:
            keep.append(path)
    return keep


def hidden_paths(user: Any, host: Host) -> set[str]:
    """The volumes of `host` that belong to teams `user` cannot see: left out of the host's
    page, its API and the wizard."""
    if has_perm(user, "host.manage", host):
        return set()
    seen = reach(user, "domain.view")
    if seen.site or host.pk in seen.hosts:
        return set()
    others = Volume.objects.filter(host=host, team__isnull=False, library=False).exclude(team__in=seen.teams)
    return set(others.values_list("path", flat=True))


def visible_resources(user: Any, host: Host, resources: dict[str, Any] | None) -> dict[str, Any] | None:
    """A host's reported resources without the volumes of other teams."""
    if not resources:
        return resources
    hidden = hidden_paths(user, host)
    if not hidden:
        return resources
    pools = [
        {**pool, "volumes": [v for v in pool.get("volumes") or [] if v.get("path") not in hidden]}
        for pool in resources.get("pools") or []
    ]
    return {**resources, "pools": pools}
