"""The volumes of a host's storage pool: listed live from its agent, each with whose it is and
which domain uses it, and the jobs that create, grow, copy and remove them.

Listing needs `host.view` on the host; a volume of a team the viewer cannot see is left out (the
rule of domains.volumes.seen_q). Changing volumes in a pool is for those who manage the host: the
volumes made here are the site's (origin POOL, no team), and a team's volumes keep their owner
through a resize. A volume any domain uses is not deleted (the domains are named); one a running
domain writes is not copied. An orphan is a domain's volume that outlived it (its delete kept
the disks): shown as such, and removed in bulk.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction
from pydantic import ValidationError

from agent.client import AgentConflict, AgentError, AgentInvalid, AgentNotFound
from agent.protocol import VOLUME_NAME, VolumeCloneRequest, VolumeCreateRequest, VolumeList
from console.access.policy import has_perm
from console.audit.services import Origin, audit_record
from console.errors import Conflict, DomusError, InvalidInput, NotFound
from console.jobs.models import Job
from console.jobs.services import job_enqueue
from domains.models import Domain, Volume
from domains.specs import parse_size_mib
from domains.volumes import hidden_paths
from hosts.agent import run_agent
from hosts.models import Host
from hosts.pools import ACTIVE_STATES, Users, pool_of, require_pool_manage, visible_names, volume_path

LIST_TIMEOUT_SECONDS = 15.0
PAGE = 500
MAX_ORPHANS = 500  # removed in one job


class HostUnavailable(DomusError):
    """The host's agent could not answer a question asked while the caller waits."""

    status = 502
    code = "host_unavailable"


def agent_refusal(host: Host, exc: AgentError) -> DomusError:
    """What the agent said, as the console's own error of the same kind."""
    if isinstance(exc, AgentNotFound):
        return NotFound(exc.detail)
    if isinstance(exc, AgentConflict):
        return Conflict(exc.detail)
    if isinstance(exc, AgentInvalid):
        return InvalidInput(exc.detail)
    return HostUnavailable(f"{host.name} cannot be asked now: {exc.detail}")


def _orphan(record: Volume | None, users: list[Domain]) -> bool:
    return (
        record is not None
        and record.origin == Volume.Origin.DOMAIN
        and record.domain_id is None
        and not record.library
        and not users
    )


def volume_rows(*, user: Any, host: Host, pool: str, limit: Any = None, offset: Any = None) -> dict[str, Any]:
    """One page of the pool's volumes as its agent lists them now, each with its owner, the
    domains using it (those the viewer may see; the others counted) and whether it is an orphan."""
    pool_of(host, pool)  # a pool the host reported
    size = _whole(limit, PAGE, "limit", most=5000)
    start = _whole(offset, 0, "offset", most=10**9)
    try:
        listing: VolumeList = run_agent(
            host,
            lambda client: client.list_volumes(pool, limit=size, offset=start),
            timeout=LIST_TIMEOUT_SECONDS,
        )
    except AgentError as exc:
        raise agent_refusal(host, exc) from exc
    hidden = hidden_paths(user, host)
    paths = [v.path for v in listing.volumes]
    records = {
        v.path: v for v in Volume.objects.filter(host=host, path__in=paths).select_related("team", "domain")
    }
    users = Users.of(host)
    rows = []
    for volume in listing.volumes:
        if volume.path in hidden:
            continue
        record = records.get(volume.path)
        using = users.of_path(volume.path)
        shown, others = visible_names(user, using)
        orphan = _orphan(record, using)
        rows.append(
            {
                **volume.model_dump(mode="json"),
                "id": record.pk if record else None,
                "owner": record.team.name if record and record.team else None,
                "library": bool(record and record.library),
                "used_by": shown,
                "used_by_others": others,
                "running_users": sum(1 for d in using if d.state in ACTIVE_STATES),
                "orphan": orphan,
                "formerly": record.domain_name if record is not None and orphan else "",
            }
        )
    return {"pool": pool, "total": listing.total, "offset": start, "limit": size, "results": rows}


def _whole(value: Any, default: int, field: str, *, most: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0 or number > most:
        raise InvalidInput(f"Invalid {field}.", fields={field: [f"must be a whole number from 0 to {most}"]})
    return number


def _bytes(value: Any, field: str) -> int:
    """A size in bytes from a number of GiB or a string with a unit ("512 MiB", "20 GiB")."""
    mib = parse_size_mib(value, default_unit="gib")
    if isinstance(mib, bool) or not isinstance(mib, int | float) or mib <= 0:
        raise InvalidInput(
            "Invalid size.", fields={field: ["must be a size: a number of GiB, or e.g. '512 MiB'"]}
        )
    return int(mib * 1024 * 1024)


def _volume_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not re.match(VOLUME_NAME, name) or ".." in name:
        raise InvalidInput(
            "Invalid volume name.",
            fields={field: ["letters, digits, '_', '.', '+' or '-', up to 255, not starting with '.'"]},
        )
    return name


def _enqueue(
    *, actor: Any, host: Host, kind: str, pool: str, params: dict[str, Any], origin: Origin | None, what: str
) -> Job:
    job = job_enqueue(kind=kind, actor=actor, host=host, target_name=what, params={"pool": pool, **params})
    audit_record(
        action=kind, actor=actor, origin=origin, obj=host, changes={"pool": pool, **params, "job": job.pk}
    )
    return job


@transaction.atomic
def volume_create(*, actor: Any, host: Host, pool: str, data: Any, origin: Origin | None = None) -> Job:
    """A new, empty volume in the pool (the site's, for any domain the host's managers give it to)."""
    require_pool_manage(actor, host)
    if not pool_of(host, pool).get("active"):
        raise Conflict(f"Storage pool {pool!r} is not running.")
    if not isinstance(data, dict):
        raise InvalidInput("Send the volume as a JSON object.")
    size = data.get("size", data.get("capacity_bytes"))
    if "capacity_bytes" in data and isinstance(size, int) and not isinstance(size, bool):
        capacity = size  # bytes as such
    else:
        capacity = _bytes(size, "size")  # a number of GiB, or a size with a unit
    try:
        request = VolumeCreateRequest(
            name=_volume_name(data.get("name")),
            capacity_bytes=capacity,
            format=data.get("format") or "qcow2",
            allocation=data.get("allocation") or "sparse",
        )
    except ValidationError as exc:
        raise InvalidInput(
            "Invalid volume.",
            fields={".".join(map(str, e["loc"])): [str(e["msg"])] for e in exc.errors()},
        ) from exc
    params = request.model_dump(mode="json")
    return _enqueue(
        actor=actor,
        host=host,
        kind="volume.create",
        pool=pool,
        params=params,
        origin=origin,
        what=request.name,
    )


def _users_refusal(actor: Any, what: str, domains: list[Domain]) -> str:
    named, others = visible_names(actor, domains)
    return f"{what}: used by {', '.join(named + ([f'{others} domain(s) of other teams'] if others else []))}."


@transaction.atomic
def volume_action(
    *,
    actor: Any,
    host: Host,
    pool: str,
    name: Any,
    action: str,
    data: Any = None,
    origin: Origin | None = None,
) -> Job:
    """resize (grow), clone or delete one volume: a job. Refused before it starts: deleting a
    volume any domain uses, copying one a running domain writes."""
    if action not in ("resize", "clone", "delete"):
        raise NotFound(f"No volume action {action!r}; there are resize, clone and delete.")
    require_pool_manage(actor, host)
    name = _volume_name(name)
    row = pool_of(host, pool)
    if not row.get("active"):
        raise Conflict(f"Storage pool {pool!r} is not running.")
    data = data if isinstance(data, dict) else {}
    users = Users.of(host).of_path(volume_path(row, name))
    params: dict[str, Any] = {"volume": name}
    if action == "delete" and users:
        raise Conflict(_users_refusal(actor, f"{name} cannot be deleted", users))
    if action == "clone":
        running = [d for d in users if d.state in ACTIVE_STATES]
        if running:
            raise Conflict(_users_refusal(actor, f"{name} cannot be copied while it is written", running))
        params["new_name"] = VolumeCloneRequest(name=_volume_name(data.get("name"), "name")).name
    if action == "resize":
        params["capacity_bytes"] = _bytes(data.get("size", data.get("capacity_bytes")), "size")
    return _enqueue(
        actor=actor, host=host, kind=f"volume.{action}", pool=pool, params=params, origin=origin, what=name
    )


def orphans(*, user: Any, host: Host, users: Users | None = None) -> list[Volume]:
    """The host's orphans the user may see: domains' volumes that outlived their domains."""
    users = users or Users.of(host)
    hidden = hidden_paths(user, host)
    rows = Volume.objects.filter(
        host=host, origin=Volume.Origin.DOMAIN, domain__isnull=True, library=False
    ).order_by("path")
    return [v for v in rows[: MAX_ORPHANS * 2] if v.path not in hidden and not users.of_path(v.path)][
        :MAX_ORPHANS
    ]


@transaction.atomic
def orphans_delete(*, actor: Any, host: Host, ids: Any = None, origin: Origin | None = None) -> Job:
    """Remove orphans (those named by id, or all the host has): one job, each checked again as
    it goes (a volume a domain took up meanwhile is kept, and said so)."""
    require_pool_manage(actor, host)
    found = orphans(user=actor, host=host)
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InvalidInput("Invalid request.", fields={"ids": ["must be a list of volume ids"]})
        wanted = set(ids)
        found = [v for v in found if v.pk in wanted]
        if len(found) != len(wanted):
            raise InvalidInput(
                "Invalid request.", fields={"ids": ["not all of these are orphans of this host"]}
            )
    if not found:
        raise Conflict(f"{host.name} has no orphaned volumes to remove.")
    params = {"volumes": [{"id": v.pk, "path": v.path} for v in found]}
    job = job_enqueue(
        kind="volume.orphans",
        actor=actor,
        host=host,
        target_name=f"{len(found)} orphaned volume(s)",
        params=params,
    )
    audit_record(
        action="volume.orphans",
        actor=actor,
        origin=origin,
        obj=host,
        changes={"paths": [v.path for v in found], "job": job.pk},
    )
    return job


def may_download(user: Any, host: Host, path: str) -> bool:
    """Whether `user` may read a volume's bytes: those who manage the host; else a volume they
    may see that is the site's media (no team, or the library) or their teams' own or granted."""
    if has_perm(user, "host.manage", host):
        return True
    if not has_perm(user, "host.view", host) or path in hidden_paths(user, host):
        return False
    return True
