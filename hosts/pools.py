"""A host's storage pools: what the agent reports, and the jobs that change them.

Pools belong to the host, not to a team: defining, starting, stopping, refreshing and removing
one needs `host.manage` on that host. Each change is a job (it waits on the agent) and an audit
row. The refusals a person can act on are made here, before any job starts: a pool type the host
cannot run, a name already taken, stopping a pool a running domain uses, deleting one any domain
uses (the domains are named). The agent checks again against libvirt itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from pydantic import ValidationError

from agent.protocol import POOL_NAME, POOL_TYPES, PoolSpec
from console.access.policy import explain, has_perm, reach
from console.audit.services import Origin, audit_record
from console.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from console.jobs.models import Job
from console.jobs.services import job_enqueue
from domains.models import Domain
from hosts.models import Host

ACTIONS = ("start", "stop", "refresh", "autostart", "delete")
NAME_PATTERN = POOL_NAME
# At most this many domains are named in a refusal; the rest are counted.
NAMED = 5
# States in which a domain's QEMU (or Xen) process holds its disks open.
ACTIVE_STATES = {
    Domain.State.RUNNING,
    Domain.State.BLOCKED,
    Domain.State.PAUSED,
    Domain.State.SHUTDOWN,
    Domain.State.PMSUSPENDED,
}


def require_pool_manage(actor: Any, host: Host) -> None:
    if actor is not None and not has_perm(actor, "host.manage", host):
        raise PermissionDenied(explain(actor, "host.manage", host))


def pools_of(host: Host) -> list[dict[str, Any]]:
    """The pools the agent last reported (its periodic stats, else its facts)."""
    return list(host.resources.get("pools") or [])


def pool_of(host: Host, name: str) -> dict[str, Any]:
    for pool in pools_of(host):
        if pool.get("name") == name:
            return pool
    raise NotFound(f"{host.name} has no storage pool {name!r}.")


def is_agents_own(host: Host, pool: dict[str, Any]) -> bool:
    """The pool at the agent's --pool-path (it defines it as `default` when none is there)."""
    path = (pool.get("path") or "").rstrip("/")
    return bool(path) and path == host.default_pool_path.rstrip("/")


def pool_types(host: Host) -> list[str]:
    """The pool types Domus can define that the host's libvirt runs (all of them until the
    agent says, for an agent too old to tell)."""
    reported = host.resources.get("pool_types")
    return [t for t in POOL_TYPES if t in reported] if reported else list(POOL_TYPES)


@dataclass(frozen=True)
class PoolUse:
    """The domains whose disks (or CD-ROMs) are in a pool."""

    domains: list[Domain]

    @property
    def running(self) -> list[Domain]:
        return [d for d in self.domains if d.state in ACTIVE_STATES]


@dataclass(frozen=True)
class Users:
    """The host's domains, and which of them have each path as a disk or CD-ROM (any state):
    one query, for every pool and volume a page or a check asks about."""

    domains: list[Domain]
    by_path: dict[str, list[Domain]]

    @classmethod
    def of(cls, host: Host) -> Users:
        rows = Domain.objects.filter(host=host).only("name", "state", "disks", "spec", "team", "host")
        domains = list(rows.order_by("name"))
        by_path: dict[str, list[Domain]] = {}
        for domain in domains:
            for disk in domain.disks or []:
                if path := disk.get("path"):
                    by_path.setdefault(path, []).append(domain)
        return cls(domains, by_path)

    def of_path(self, path: str) -> list[Domain]:
        return self.by_path.get(path, [])


def _inside(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def volume_path(pool: dict[str, Any], name: str) -> str:
    """Where a volume named `name` lies in a pool (as reported): its directory, then the name."""
    return f"{(pool.get('path') or '').rstrip('/')}/{name}"


def pool_uses(host: Host, users: Users | None = None) -> dict[str, PoolUse]:
    """Per pool name, the host's domains with a disk in it: by path (the pool's target
    directory, or its device directory for LVM), and, for a domain still being created, by
    the pool its spec makes a disk in."""
    users = users or Users.of(host)
    pools = [(p["name"], p.get("path")) for p in pools_of(host)]
    found: dict[str, list[Domain]] = {name: [] for name, _ in pools}
    for domain in users.domains:
        paths = [d.get("path") for d in domain.disks or [] if d.get("path")]
        named = set()
        if domain.state == Domain.State.NEW:  # its new volumes may not be reported yet
            specs = (domain.spec or {}).get("disks") or []
            named = {d.get("pool") for d in specs if isinstance(d, dict) and not d.get("existing")}
        for name, directory in pools:
            if name in named or (directory and any(_inside(path, directory) for path in paths)):
                found[name].append(domain)
    return {name: PoolUse(domains) for name, domains in found.items()}


def visible_names(actor: Any, domains: list[Domain]) -> tuple[list[str], int]:
    """The names of the domains `actor` may see (all of them for the system, None), and how
    many others there are: a refusal or a page names only those."""
    if actor is None:
        return [d.name for d in domains], 0
    sees = reach(actor, "domain.view")
    shown = [d.name for d in domains if sees.reaches_domain(d.pk, d.host_id, d.team_id)]
    return shown, len(domains) - len(shown)


def named_domains(actor: Any, domains: list[Domain]) -> str:
    """The domains the actor may see by name (the first NAMED), the others counted."""
    shown, hidden = visible_names(actor, domains)
    parts = shown[:NAMED]
    if len(shown) > NAMED:
        parts.append(f"{len(shown) - NAMED} more")
    if hidden:
        parts.append(f"{hidden} domain(s) of other teams")
    return ", ".join(parts)


def invalid_input(exc: ValidationError, what: str) -> InvalidInput:
    """A model's refusal as the API's: each message under its field's dotted path."""
    fields: dict[str, list[str]] = {}
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "non_field_errors"
        message = str(error["msg"]).removeprefix("Value error, ")
        fields.setdefault(field, []).append(message)
    return InvalidInput(f"Invalid {what}.", fields=fields)


def _spec(data: Any) -> PoolSpec:
    if not isinstance(data, dict):
        raise InvalidInput("Send the pool as a JSON object.")
    try:
        return PoolSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc, "storage pool") from exc


@transaction.atomic
def pool_create(*, actor: Any, host: Host, data: Any, origin: Origin | None = None) -> Job:
    """Define a pool on `host` (and, as asked, build, start and mark it autostart): a job."""
    require_pool_manage(actor, host)
    spec = _spec(data)
    offered = pool_types(host)
    if spec.type not in offered:
        raise InvalidInput(
            "Invalid storage pool.",
            fields={"type": [f"{host.name} cannot run {spec.type!r} pools; it offers {', '.join(offered)}"]},
        )
    if any(p.get("name") == spec.name for p in pools_of(host)):
        raise Conflict(f"{host.name} already has a storage pool named {spec.name!r}.")
    params = spec.model_dump(mode="json", exclude_defaults=False)
    job = job_enqueue(
        kind="pool.create", actor=actor, host=host, target_name=f"pool {spec.name}", params=params
    )
    audit_record(
        action="pool.create",
        actor=actor,
        origin=origin,
        obj=host,
        changes={"pool": spec.name, "spec": params, "job": job.pk},
    )
    return job


@transaction.atomic
def pool_action(
    *,
    actor: Any,
    host: Host,
    name: str,
    action: str,
    autostart: Any = None,
    delete_storage: Any = False,
    origin: Origin | None = None,
) -> Job:
    """start, stop, refresh, autostart (on or off) or delete one of the host's pools: a job.
    Stopping is refused while a running domain uses the pool, deleting while any domain does."""
    if action not in ACTIONS:
        raise NotFound(f"No pool action {action!r}; there are {', '.join(ACTIONS)}.")
    require_pool_manage(actor, host)
    pool = pool_of(host, name)
    params: dict[str, Any] = {"pool": name}
    if action == "autostart":
        if not isinstance(autostart, bool):
            raise InvalidInput("Invalid request.", fields={"autostart": ["must be true or false"]})
        params["autostart"] = autostart
    if action == "delete":
        if not isinstance(delete_storage, bool):
            raise InvalidInput("Invalid request.", fields={"delete_storage": ["must be true or false"]})
        params["delete_storage"] = delete_storage
    if action in ("stop", "delete") and is_agents_own(host, pool):
        raise Conflict(
            f"Storage pool {name!r} is where {host.name}'s agent keeps ISOs, cloud-init seeds and "
            "new domains' disks: it cannot be stopped or deleted from Domus."
        )
    if action in ("stop", "delete"):
        use = pool_uses(host).get(name, PoolUse([]))
        users = use.running if action == "stop" else use.domains
        if users:
            verb = "stopped" if action == "stop" else "deleted"
            which = "running domains use" if action == "stop" else "domains have disks in"
            raise Conflict(
                f"Storage pool {name!r} cannot be {verb}: these {which} it: {named_domains(actor, users)}."
            )
    if action == "start" and pool.get("active"):
        raise Conflict(f"Storage pool {name!r} is already running.")
    if action in ("stop", "refresh") and not pool.get("active"):
        raise Conflict(f"Storage pool {name!r} is not running.")
    job = job_enqueue(
        kind=f"pool.{action}", actor=actor, host=host, target_name=f"pool {name}", params=params
    )
    audit_record(
        action=f"pool.{action}", actor=actor, origin=origin, obj=host, changes={**params, "job": job.pk}
    )
    return job


def pool_rows(actor: Any, host: Host, users: Users | None = None) -> list[dict[str, Any]]:
    """The host's pools for a page or the API: each as reported (without its offered volumes,
    which visible_resources filters per viewer), with the domains using it that the viewer may
    see, and how many others."""
    uses = pool_uses(host, users)
    rows = []
    for pool in pools_of(host):
        shown, others = visible_names(actor, uses.get(pool["name"], PoolUse([])).domains)
        capacity = pool.get("capacity_bytes") or 0
        rows.append(
            {
                "name": pool["name"],
                "type": pool.get("type", "unknown"),
                "state": pool.get("state") or ("running" if pool.get("active") else "inactive"),
                "active": bool(pool.get("active")),
                "autostart": bool(pool.get("autostart")),
                "persistent": bool(pool.get("persistent", True)),
                "path": pool.get("path"),
                "source": pool.get("source") or "",
                "capacity_bytes": capacity,
                "allocation_bytes": pool.get("allocation_bytes") or 0,
                "available_bytes": pool.get("available_bytes") or 0,
                "used_pct": round(100 * (pool.get("allocation_bytes") or 0) / capacity) if capacity else 0,
                "warn_bytes": capacity * 9 // 10,  # a usage bar turns to a warning past 90 %
                "volume_count": pool.get("volume_count"),
                "used_by": shown,
                "used_by_others": others,
                "agents_own": is_agents_own(host, pool),
            }
        )
    return rows
