"""Team quotas: what a team's domains use, and whether a new domain still fits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from console.access.models import Team
from console.errors import InvalidInput


@dataclass(frozen=True)
class Usage:
    domains: int
    vcpus: int
    memory_mib: int
    disk_gib: float  # the disks whose size the console knows
    disks_of_unknown_size: int  # existing volumes used as is, and disks of domains found on a host


def _disk_sizes(spec: Any, reported: Any) -> tuple[float, int]:
    """(GiB the console knows of, how many disks it knows no size of) for one domain, from the
    spec Domus created it with, else (a domain found on its host) the disks its agent reports."""
    disks = spec.get("disks") if isinstance(spec, dict) else None
    if not isinstance(disks, list):
        found = reported if isinstance(reported, list) else []
        return 0.0, sum(1 for d in found if isinstance(d, dict) and d.get("device") == "disk")
    known, unknown = 0.0, 0
    for disk in disks:
        size = disk.get("size_gib") if isinstance(disk, dict) else None
        if isinstance(size, int | float) and not isinstance(size, bool) and 0 <= size < float("inf"):
            known += size
        else:
            unknown += 1
    return known, unknown


def team_usage(team: Team) -> Usage:
    """What the team's domains use. A disk's size counts when the console set it: a new volume or
    a qcow2 overlay on a base image (`size_gib` in its spec). A disk that is an existing volume
    used as is has no size in its spec, and the console keeps no volume sizes (a pool's inventory
    names ISOs and images only; a volume's record says whose it is, not how big), so it is
    counted in `disks_of_unknown_size`: never as 0 GiB silently, nor as a guess.

    The disk quota therefore bounds the storage the console allocates for the team, which is
    what a create can add (and a create asks for its new disks only): attaching a volume that
    already exists takes no new space, and who may attach it is a question of whose volume it
    is (its owner), not of the quota."""
    from domains.models import Domain

    rows = list(Domain.objects.filter(team=team).values_list("vcpus", "memory_mib", "spec", "disks"))
    sizes = [_disk_sizes(spec, reported) for _, _, spec, reported in rows]
    return Usage(
        domains=len(rows),
        vcpus=sum(r[0] for r in rows),
        memory_mib=sum(r[1] for r in rows),
        disk_gib=sum(known for known, _ in sizes),
        disks_of_unknown_size=sum(unknown for _, unknown in sizes),
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
