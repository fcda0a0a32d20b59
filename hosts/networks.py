"""A host's virtual networks: what the agent reports, and the jobs that change them.

Networks belong to the host, like its storage pools: defining, starting, stopping, changing and
removing one needs `host.manage` on that host. Each change is a job (it waits on the agent) and
an audit row. The refusals a person can act on are made here, before any job starts: a name
already taken, a host bridge the host does not have, stopping or deleting a network a running
domain is attached to (the domains are named), a DHCP range outside the network's subnet. The
agent checks again against libvirt itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from pydantic import ValidationError

from agent.protocol import NETWORK_MODES, DhcpSettings, NetworkSpec
from console.access.models import Team
from console.access.policy import has_perm
from console.audit.services import Origin, audit_record
from console.errors import Conflict, InvalidInput, NotFound
from console.jobs.models import Job
from console.jobs.services import job_enqueue
from domains.models import Domain
from hosts.models import Host, NetworkAccess
from hosts.pools import ACTIVE_STATES, invalid_input, named_domains, require_pool_manage, visible_names

ACTIONS = ("start", "stop", "autostart", "delete")
MODE_LABELS = {
    "nat": "NAT",
    "route": "routed",
    "open": "open",
    "isolated": "isolated",
    "bridge": "host bridge",
}


def require_network_manage(actor: Any, host: Host) -> None:
    """The same right as for the host's storage: `host.manage` on it."""
    require_pool_manage(actor, host)


def networks_of(host: Host) -> list[dict[str, Any]]:
    return list(host.resources.get("networks") or [])


def bridges_of(host: Host) -> list[str]:
    return list(host.resources.get("bridges") or [])


def network_of(host: Host, name: str) -> dict[str, Any]:
    for network in networks_of(host):
        if network.get("name") == name:
            return network
    raise NotFound(f"{host.name} has no virtual network {name!r}.")


@dataclass(frozen=True)
class NetworkUse:
    """The domains with a network card on a network."""

    domains: list[Domain]

    @property
    def running(self) -> list[Domain]:
        return [d for d in self.domains if d.state in ACTIVE_STATES]


def network_uses(host: Host) -> dict[str, NetworkUse]:
    """Per network name, the host's domains with a card on it: as their agent reports their
    cards, and, for a domain still being created, as its spec asks."""
    found: dict[str, list[Domain]] = {n["name"]: [] for n in networks_of(host)}
    rows = Domain.objects.filter(host=host).only("name", "state", "nics", "spec", "team", "host")
    for domain in rows.order_by("name"):
        names = {n.get("name") for n in domain.nics or [] if n.get("source") == "network"}
        if domain.state == Domain.State.NEW:
            specs = (domain.spec or {}).get("nics") or []
            asked = [n for n in specs if isinstance(n, dict) and n.get("source", "network") == "network"]
            names |= {n.get("name", "default") for n in asked}
        for name in names:
            if name in found:
                found[name].append(domain)
    return {name: NetworkUse(domains) for name, domains in found.items()}


def _spec(data: Any) -> NetworkSpec:
    if not isinstance(data, dict):
        raise InvalidInput("Send the network as a JSON object.")
    try:
        return NetworkSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc, "virtual network") from exc


def _subnet_clash(host: Host, spec: NetworkSpec) -> str | None:
    """The name of another network of the host whose IPv4 subnet overlaps the new one's."""
    if spec.ipv4 is None:
        return None
    mine = ipaddress.IPv4Interface(spec.ipv4).network
    for network in networks_of(host):
        theirs = network.get("ipv4")
        if theirs and ipaddress.IPv4Interface(theirs).network.overlaps(mine):
            return str(network["name"])
    return None


@transaction.atomic
def network_create(*, actor: Any, host: Host, data: Any, origin: Origin | None = None) -> Job:
    """Define a network on `host` (and, as asked, start it and mark it autostart): a job."""
    require_network_manage(actor, host)
    spec = _spec(data)
    if any(n.get("name") == spec.name for n in networks_of(host)):
        raise Conflict(f"{host.name} already has a virtual network named {spec.name!r}.")
    if spec.mode == "bridge" and spec.bridge not in bridges_of(host):
        offered = ", ".join(bridges_of(host)) or "none"
        raise InvalidInput(
            "Invalid virtual network.",
            fields={"bridge": [f"{host.name} has no host bridge {spec.bridge!r} (its bridges: {offered})"]},
        )
    if spec.mode != "bridge" and spec.bridge is not None:
        taken = [n["name"] for n in networks_of(host) if n.get("bridge") == spec.bridge]
        if taken or spec.bridge in bridges_of(host):
            owner = f"the network {taken[0]!r}" if taken else "the host"
            raise InvalidInput(
                "Invalid virtual network.",
                fields={"bridge": [f"{spec.bridge!r} is already {owner}'s bridge: choose another or none"]},
            )
    if clash := _subnet_clash(host, spec):
        raise InvalidInput(
            "Invalid virtual network.",
            fields={"ipv4": [f"overlaps the subnet of {host.name}'s network {clash!r}"]},
        )
    params = spec.model_dump(mode="json")
    job = job_enqueue(
        kind="network.create", actor=actor, host=host, target_name=f"network {spec.name}", params=params
    )
    audit_record(
        action="network.create",
        actor=actor,
        origin=origin,
        obj=host,
        changes={"network": spec.name, "spec": params, "job": job.pk},
    )
    return job


@transaction.atomic
def network_action(
    *,
    actor: Any,
    host: Host,
    name: str,
    action: str,
    autostart: Any = None,
    origin: Origin | None = None,
) -> Job:
    """start, stop, autostart (on or off) or delete one of the host's networks: a job. Stopping
    or deleting is refused while a running domain has a card on it: it would lose its network."""
    if action not in ACTIONS:
        raise NotFound(f"No network action {action!r}; there are {', '.join(ACTIONS)}.")
    require_network_manage(actor, host)
    network = network_of(host, name)
    params: dict[str, Any] = {"network": name}
    if action == "autostart":
        if not isinstance(autostart, bool):
            raise InvalidInput("Invalid request.", fields={"autostart": ["must be true or false"]})
        if not network.get("persistent", True):
            raise Conflict(
                f"Virtual network {name!r} is transient: only a defined network can start with the host."
            )
        params["autostart"] = autostart
    if action in ("stop", "delete"):
        running = network_uses(host).get(name, NetworkUse([])).running
        if running and network.get("active"):
            verb = "stopped" if action == "stop" else "deleted"
            raise Conflict(
                f"Virtual network {name!r} cannot be {verb}: these running domains are attached to it: "
                f"{named_domains(actor, running)}. Shut them down or move their network cards first."
            )
    if action == "start" and network.get("active"):
        raise Conflict(f"Virtual network {name!r} is already running.")
    if action == "stop" and not network.get("active"):
        raise Conflict(f"Virtual network {name!r} is not running.")
    job = job_enqueue(
        kind=f"network.{action}", actor=actor, host=host, target_name=f"network {name}", params=params
    )
    audit_record(
        action=f"network.{action}", actor=actor, origin=origin, obj=host, changes={**params, "job": job.pk}
    )
    return job


def _dhcp(data: Any, network: dict[str, Any]) -> DhcpSettings:
    if not isinstance(data, dict):
        raise InvalidInput("Send the DHCP settings as a JSON object.")
    try:
        settings = DhcpSettings.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc, "DHCP settings") from exc
    if network.get("forward") == "bridge":
        raise Conflict(f"Virtual network {network['name']!r} joins a host bridge: libvirt gives it no DHCP.")
    if problems := settings.dhcp_problems(network.get("ipv4")):
        raise invalid_input(ValidationError.from_exception_data("DhcpSettings", problems), "DHCP settings")
    return settings


@transaction.atomic
def network_dhcp_update(*, actor: Any, host: Host, name: str, data: Any, origin: Origin | None = None) -> Job:
    """Replace a network's DHCP range and static hosts (live too when it runs): a job."""
    require_network_manage(actor, host)
    network = network_of(host, name)
    settings = _dhcp(data, network)
    params = {"network": name, **settings.model_dump(mode="json")}
    job = job_enqueue(
        kind="network.dhcp", actor=actor, host=host, target_name=f"network {name}", params=params
    )
    before = {k: network.get(k) for k in ("dhcp_start", "dhcp_end", "hosts")}
    audit_record(
        action="network.dhcp",
        actor=actor,
        origin=origin,
        obj=host,
        changes={"network": name, "before": before, "after": settings.model_dump(mode="json"), "job": job.pk},
    )
    return job


def network_rows(actor: Any, host: Host) -> list[dict[str, Any]]:
    """The host's networks for a page or the API: each as reported, with the domains attached
    that the viewer may see, and how many others."""
    uses = network_uses(host)
    kept = network_teams(host)
    names = dict(
        Team.objects.filter(pk__in={t for ids in kept.values() for t in ids}).values_list("pk", "name")
    )
    rows = []
    for network in networks_of(host):
        attached = uses.get(network["name"], NetworkUse([])).domains
        shown, others = visible_names(actor, attached)
        forward = network.get("forward") or "isolated"
        rows.append(
            {
                "name": network["name"],
                "mode": forward,
                "mode_label": MODE_LABELS.get(forward, forward),
                "active": bool(network.get("active")),
                "autostart": bool(network.get("autostart")),
                "persistent": bool(network.get("persistent", True)),
                "bridge": network.get("bridge"),
                "ipv4": network.get("ipv4"),
                "ipv6": network.get("ipv6"),
                "forward_dev": network.get("forward_dev"),
                "dhcp_start": network.get("dhcp_start"),
                "dhcp_end": network.get("dhcp_end"),
                "hosts": list(network.get("hosts") or []),
                "attached": shown,
                "attached_others": others,
                "running_attached": len([d for d in attached if d.state in ACTIVE_STATES]),
                "teams": [{"id": t, "name": names.get(t, "")} for t in kept.get(network["name"], [])],
            }
        )
    return rows


def network_modes() -> list[tuple[str, str]]:
    return [(mode, MODE_LABELS[mode]) for mode in NETWORK_MODES]


# -- which teams may use a network ---------------------------------------------------------------
def network_teams(host: Host) -> dict[str, list[int]]:
    """The host's restricted networks: name -> the ids of the teams that may use it."""
    return networks_kept([host]).get(host.pk, {})


def networks_kept(hosts: Any) -> dict[int, dict[str, list[int]]]:
    """For many hosts at once (two queries): host id -> its restricted networks' team ids."""
    kept: dict[int, dict[str, list[int]]] = {}
    rows = NetworkAccess.objects.filter(host__in=hosts).prefetch_related("teams")
    for access in rows:
        if ids := sorted(team.pk for team in access.teams.all()):
            kept.setdefault(access.host_id, {})[access.network] = ids
    return kept


def network_refusal(
    *, actor: Any, host: Host, team: Any, name: str, kept: dict[str, list[int]] | None = None
) -> str | None:
    """Why `actor` may not put a card of `team`'s domain on the host's network `name` (None: it
    may). A network kept for some teams is theirs, and its host's managers'."""
    allowed = (network_teams(host) if kept is None else kept).get(name)
    if not allowed or (team is not None and team.pk in allowed):
        return None
    if actor is None or has_perm(actor, "host.manage", host):
        return None
    whose = "a domain of no team" if team is None else f"team {team.name}"
    return f"virtual network {name!r} on {host.name} is kept for other teams: {whose} may not use it"


def nic_refusals(*, actor: Any, host: Host, team: Any, nics: list[Any]) -> dict[str, list[str]]:
    """Per card field (`nics.<i>.name`), why a domain's cards may not go where they ask."""
    kept = network_teams(host)
    problems: dict[str, list[str]] = {}
    for index, nic in enumerate(nics):
        if nic.source == "network" and (
            why := network_refusal(actor=actor, host=host, team=team, name=nic.name, kept=kept)
        ):
            problems[f"nics.{index}.name"] = [why]
    return problems


@transaction.atomic
def network_teams_set(
    *, actor: Any, host: Host, name: str, team_ids: Any, origin: Origin | None = None
) -> list[int]:
    """Keep a network for these teams (an empty list: open to every team that may use the host)."""
    require_network_manage(actor, host)
    network_of(host, name)
    if not isinstance(team_ids, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in team_ids
    ):
        raise InvalidInput("Invalid teams.", fields={"teams": ["must be a list of team ids"]})
    teams = list(Team.objects.filter(pk__in=team_ids))
    if unknown := sorted(set(team_ids) - {t.pk for t in teams}):
        raise InvalidInput(
            "Invalid teams.", fields={"teams": [f"no team with id {', '.join(map(str, unknown))}"]}
        )
    access, _ = NetworkAccess.objects.get_or_create(host=host, network=name)
    before = sorted(access.teams.values_list("name", flat=True))
    access.teams.set(teams)
    after = sorted(t.name for t in teams)
    audit_record(
        action="network.teams",
        actor=actor,
        origin=origin,
        obj=host,
        changes={"network": name, "before": before, "after": after},
    )
    return sorted(t.pk for t in teams)
