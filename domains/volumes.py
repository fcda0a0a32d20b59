"""Whose a volume is, and whether a request may name it.

Every path a spec can carry (an existing disk, a backing image, an ISO, a kernel or initrd) is
resolved to a volume of the host and checked against what the domain's team may use: its own
volumes, those granted to it, the site's library (read-only), or, for those who manage the
host, anything. That a path lies in one of the host's pools (domains.specs) says nothing about
whose it is: a team attached another team's disk by its path, and deleted it with the domain.

Who owns what (domains.models.Volume): the team of the domain that created a volume or was
first seen using it; files no domain used yet (an ISO or base image put in a pool by hand) are
the site's, read-only for teams. Ownership is recorded when the host reports a domain's disks;
those who manage the host hand a volume to another team, grant it to teams besides its owner, or
put it in the library (volume_update, from the API's /api/v1/volumes/ and the host's page).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from django.db import transaction
from django.db.models import Q

from agent.protocol import DomainSpec
from console.access.models import Team
from console.access.policy import explain, has_perm, reach
from console.audit.services import Origin, audit_record
from console.errors import InvalidInput, PermissionDenied
from console.params import is_id
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


def _writes(domain: Domain, host: Host) -> list[str]:
    """The volumes `domain` writes: its disks as its host reports them, and the existing volumes
    its spec names (a create not done yet)."""
    return _disk_paths(domain.disks) + [absolute(host, p) for p in _spec_paths(domain.spec)]


def writers_on(host: Host, *, besides: Domain | None = None) -> dict[str, Domain]:
    """Each volume of `host` that a domain (other than `besides`) writes, with the first such
    domain: one read of the host's domains, for every path a check or a delete asks about."""
    others = Domain.objects.filter(host=host).only("name", "host", "team", "disks", "spec").order_by("pk")
    if besides is not None and besides.pk is not None:
        others = others.exclude(pk=besides.pk)
    writers: dict[str, Domain] = {}
    for other in others:
        for path in _writes(other, host):
            writers.setdefault(path, other)
    return writers


def refusal(
    *,
    actor: Any,
    host: Host,
    team: Team | None,
    path: str,
    writable: bool,
    domain: Domain | None = None,
    writers: dict[str, Domain] | None = None,
) -> str | None:
    """Why `path` may not be used by a domain of `team` on `host` (None: it may). `writable`:
    as a disk the guest writes; else as read-only media (an ISO, a kernel, a backing image).
    `writers`: writers_on(host, besides=domain), when the caller has it already."""
    path = absolute(host, path)
    manages = has_perm(actor, "host.manage", host)
    if writers is None:
        writers = writers_on(host, besides=domain)
    other = writers.get(path)
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
    if team is not None and (row.team_id == team.pk or row.granted_to.filter(pk=team.pk).exists()):
        return None  # its owner's, or granted to the team: used as its owner uses it
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
    writers = writers_on(host, besides=domain) if uses else {}
    for field, path, writable in uses:
        why = refusal(actor=actor, host=host, team=team, path=path, writable=writable, writers=writers)
        if why:
            errors[field] = [f"{path} {why}"]
    return errors


def register_disks(domains: Iterable[Domain]) -> None:
    """Record the disks the hosts report as their domains' teams' volumes, where no one owns
    them yet (the first domain seen with a volume is the one that made it, or was given it)."""
    rows = [
        Volume(host_id=d.host_id, path=path, team_id=d.team_id, domain=d, domain_name=d.name)
        for d in domains
        for path in _disk_paths(d.disks)
    ]
    if rows:
        Volume.objects.bulk_create(rows, ignore_conflicts=True)
    _record_sizes(domains)


def _record_sizes(domains: Iterable[Domain]) -> None:
    """The sizes the hosts report of their domains' disks, on the volumes' records (what the
    teams' disk quotas count): one read, and a write only for a size that changed."""
    sizes = {
        (d.host_id, disk["path"]): disk["capacity_bytes"]
        for d in domains
        for disk in d.disks or []
        if isinstance(disk, dict) and disk.get("path") and isinstance(disk.get("capacity_bytes"), int)
    }
    if not sizes:
        return
    hosts = {host for host, _ in sizes}
    paths = {path for _, path in sizes}
    for volume in Volume.objects.filter(host_id__in=hosts, path__in=paths).only(
        "host_id", "path", "capacity_bytes"
    ):
        size = sizes.get((volume.host_id, volume.path))
        if size is not None and size != volume.capacity_bytes:
            Volume.objects.filter(pk=volume.pk).update(capacity_bytes=size)


def kept_on_delete(domain: Domain) -> dict[str, str]:
    """The disks of `domain` a delete "with its disks" must keep, each with why (for the job's
    log, which the domain's people read: another domain is not named)."""
    paths = _disk_paths(domain.disks)
    rows = {v.path: v for v in Volume.objects.filter(host_id=domain.host_id, path__in=paths)}
    writers = writers_on(domain.host, besides=domain)
    keep: dict[str, str] = {}
    for path in paths:
        row = rows.get(path)
        if row is not None and row.library:
            keep[path] = "it is in the site's library"
        elif row is not None and row.team_id != domain.team_id:
            keep[path] = "it belongs to another team" if row.team_id is not None else "it is the site's"
        elif path in writers:
            keep[path] = "another domain uses it too"
    return keep


def seen_q(user: Any) -> Q | None:
    """The volumes `user` sees on the hosts they see (None: all of them). Those who manage a host,
    or see every domain on it, see all its volumes; others the site's (no team, or the library)
    and those their teams own or are granted. The one rule for the host's resources (hidden_paths)
    and the volume list (domains.selectors.volume_list)."""
    manages, seen = reach(user, "host.manage"), reach(user, "domain.view")
    if manages.site or seen.site:
        return None
    granted = Volume.granted_to.through.objects.filter(team_id__in=seen.teams).values("volume_id")
    return (
        Q(host__in=manages.hosts | seen.hosts)
        | Q(team__isnull=True)
        | Q(library=True)
        | Q(team__in=seen.teams)
        | Q(pk__in=granted)
    )


def hidden_paths(user: Any, host: Host) -> set[str]:
    """The volumes of `host` that belong to teams `user` cannot see: left out of the host's
    page, its API and the wizard."""
    seen = seen_q(user)
    if seen is None:
        return set()
    others = Volume.objects.filter(host=host).exclude(seen)
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


@dataclass(frozen=True)
class VolumeUse:
    """Whether some domain's disk a volume is, and that domain when the viewer may see it (one
    they may not is not named, as in refusal)."""

    in_use: bool = False
    domain: Domain | None = None


def volume_uses(volumes: Iterable[Volume], viewer: Any) -> dict[int, VolumeUse]:
    """Each volume's use (its writer, as writers_on finds it), by volume id, in one query for
    their hosts' domains; a volume no domain writes is not in it."""
    rows = list(volumes)
    wanted = {(v.host_id, v.path): v.pk for v in rows}
    sees = reach(viewer, "domain.view")
    uses: dict[int, VolumeUse] = {}
    domains = Domain.objects.filter(host_id__in={v.host_id for v in rows}).select_related("host")
    for domain in domains.only("name", "host", "team", "disks", "spec").order_by("pk"):
        for path in _writes(domain, domain.host):
            pk = wanted.get((domain.host_id, path))
            if pk is not None and pk not in uses:
                shown = sees.reaches_domain(domain.pk, domain.host_id, domain.team_id)
                uses[pk] = VolumeUse(in_use=True, domain=domain if shown else None)
    return uses


def teams_by_id(ids: Iterable[int], *, field: str) -> list[Team]:
    """The teams `ids` name, in that order; an id no team has is an error naming `field`. Any
    team of the site: the volumes of a host are its managers' to hand out."""
    wanted = list(dict.fromkeys(ids))
    found = {t.pk: t for t in Team.objects.filter(pk__in=[i for i in wanted if is_id(i)])}
    unknown = [i for i in wanted if i not in found]
    if unknown:
        raise InvalidInput(f"Unknown {field}.", fields={field: [f"no team with id {i}" for i in unknown]})
    return [found[i] for i in wanted]


def require_volume_manage(actor: Any, volume: Volume) -> None:
    """Who owns a volume, and who else may use it, is for those who manage its host."""
    if not has_perm(actor, "host.manage", volume.host):
        raise PermissionDenied(explain(actor, "host.manage", volume.host))


def _described(volume: Volume) -> dict[str, Any]:
    return {
        "team": volume.team.name if volume.team is not None else None,
        "library": volume.library,
        "granted_to": sorted(t.name for t in volume.granted_to.all()),
    }


@transaction.atomic
def volume_update(
    *,
    actor: Any,
    volume: Volume,
    team: Team | EllipsisType | None = ...,
    library: bool | EllipsisType = ...,
    granted_to: Iterable[Team] | EllipsisType = ...,
    origin: Origin | None = None,
) -> Volume:
    """Hand `volume` to `team` (None: the site's), put it in the library or take it out, or set
    the teams it is granted to (... leaves each as it is). A library volume is read-only for
    every team, its owner's too; a granted team uses it as its owner does. Only what changed is
    audited (`volume.update`); nothing changed, nothing recorded.

    No live event: no socket shows volumes, and who may see what (access.changed) does not
    depend on them; the host's page and the API read them afresh."""
    require_volume_manage(actor, volume)
    # Locked, and read afresh: two changes at once are recorded one after the other.
    volume = Volume.objects.select_for_update(of=("self",)).select_related("host", "team").get(pk=volume.pk)
    before = _described(volume)
    fields: list[str] = []
    if not isinstance(team, EllipsisType):
        volume.team = team
        fields.append("team")
    if not isinstance(library, EllipsisType):
        volume.library = library
        fields.append("library")
    if fields:
        volume.save(update_fields=fields)
    if not isinstance(granted_to, EllipsisType):
        volume.granted_to.set(list(granted_to))
    after = _described(volume)
    changed = [key for key in after if after[key] != before[key]]
    if changed:
        audit_record(
            action="volume.update",
            actor=actor,
            origin=origin,
            obj=volume,
            changes={
                "host": volume.host.name,
                "before": {k: before[k] for k in changed},
                "after": {k: after[k] for k in changed},
            },
        )
    return volume
