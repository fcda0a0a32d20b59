"""Team quotas: what a team's domains use, and whether a new domain still fits."""

from __future__ import annotations

from dataclasses import dataclass

from console.access.models import Team
from console.errors import InvalidInput


@dataclass(frozen=True)
class Usage:
    domains: int
    vcpus: int
    memory_mib: int
    disk_gib: float


def team_usage(team: Team) -> Usage:
    from domains.models import Domain

    rows = list(Domain.objects.filter(team=team).values_list("vcpus", "memory_mib", "spec"))
    disk = sum(float(d.get("size_gib", 0)) for _, _, spec in rows for d in (spec or {}).get("disks", []))
    return Usage(
        domains=len(rows),
        vcpus=sum(r[0] for r in rows),
        memory_mib=sum(r[1] for r in rows),
        disk_gib=disk,
    )


def quota_check(team: Team, *, vcpus: int, memory_mib: int, disk_gib: float) -> None:
    """Raise InvalidInput naming each quota one more domain of this size would exceed."""
    used = team_usage(team)
    checks = [
        ("name", team.max_domains, used.domains, 1, "domains"),
        ("vcpus", team.max_vcpus, used.vcpus, vcpus, "vCPUs"),
        ("memory_mib", team.max_memory_mib, used.memory_mib, memory_mib, "MiB of memory"),
        ("disks", team.max_disk_gib, used.disk_gib, disk_gib, "GiB of disk"),
    ]
    errors: dict[str, list[str]] = {}
    for field, limit, in_use, wanted, unit in checks:
        if limit is not None and in_use + wanted > limit:
            errors[field] = [
                f"team {team.name}'s quota of {limit:g} {unit} would be exceeded "
                f"({in_use:g} in use, {wanted:g} requested)"
            ]
    if errors:
        raise InvalidInput(f"Team {team.name}'s quota would be exceeded.", fields=errors)
