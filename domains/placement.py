"""Placing a new domain automatically: the host with the most free memory that can run it."""

from __future__ import annotations

from typing import Any

from agent.protocol import HostFacts
from console.errors import InvalidInput
from hosts.models import Host
from hosts.selectors import host_list


def free_memory_mib(host: Host) -> int:
    """What the agent last reported free (its periodic stats, else its facts)."""
    value = host.stats.get("free_memory_mib") or host.facts.get("free_memory_mib") or 0
    return int(value)


def _unfit(host: Host, *, memory_mib: int, vcpus: int, mode: str) -> str | None:
    """Why `host` cannot take the domain, or None when it can."""
    if host.state != Host.State.ONLINE:
        return "offline"
    if host.maintenance:
        return "in maintenance"
    try:
        facts = HostFacts.model_validate(host.facts)
    except ValueError:
        return "has not reported its facts yet"
    if facts.cpus < vcpus:
        return f"only {facts.cpus} CPUs"
    if free_memory_mib(host) < memory_mib:
        return f"only {free_memory_mib(host)} MiB free"
    caps = facts.capabilities
    if caps is not None and caps.modes:
        if not any(m.mode == mode and m.available for m in caps.modes):
            return f"cannot run {mode.upper()} guests"
    return None


def host_place(*, user: Any, memory_mib: int, vcpus: int, mode: str, team: Any = None) -> Host:
    """The best host for a new domain among those `user` can see: online, not in
    maintenance, open to `team`, able to run `mode`, with the CPUs and free memory it needs.
    Raises InvalidInput that says why each host was passed over."""
    reasons: list[str] = []
    best: Host | None = None
    for host in host_list(user=user).prefetch_related("teams"):
        team_ids = {t.pk for t in host.teams.all()}
        if team_ids and (team is None or team.pk not in team_ids):
            reasons.append(f"{host.name}: reserved to other teams")
            continue
        why = _unfit(host, memory_mib=memory_mib, vcpus=vcpus, mode=mode)
        if why is not None:
            reasons.append(f"{host.name}: {why}")
        elif best is None or free_memory_mib(host) > free_memory_mib(best):
            best = host
    if best is None:
        detail = "; ".join(reasons) or "you may not create domains on any host"
        raise InvalidInput("No host fits.", fields={"host": [f"no host can take this domain ({detail})"]})
    return best
