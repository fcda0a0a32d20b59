"""Team quotas: what a team's domains use, and whether a new domain still fits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from console.access.models import Team
from console.errors import InvalidInput

GIB = 1 << 30


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
    """What the team's domains use, and the team's volumes. A disk counts by the larger of the
    size the console set for it (`size_gib` in the domain's spec: a new volume or a qcow2 overlay)
    and the size of its volume as last learned (Volume.capacity_bytes: made, grown, uploaded or
    attached here, or reported by its host); the team's other volumes with a known size count as
    well (a disk kept when its domain was deleted, an ISO uploaded for the team, a disk detached).
    A disk of no known size at all (an existing volume used as is, not yet reported) is counted
    in `disks_of_unknown_size`: never as 0 GiB silently, nor as a guess."""
    from domains.models import Domain, Volume

    rows = list(
        Domain.objects.filter(team=team).values_list("host_id", "vcpus", "memory_mib", "spec", "disks")
    )
    sized: dict[tuple[int, str], int] = {
        (host, path): int(size or 0)
        for host, path, size in Volume.objects.filter(
            team=team, library=False, capacity_bytes__isnull=False
        ).values_list("host_id", "path", "capacity_bytes")
    }
    counted: set[tuple[int, str]] = set()
    disk_gib, unknown = 0.0, 0
    for host, _, _, spec, reported in rows:
        known, missing = _disk_sizes(spec, reported)
        paths = [
            (host, d["path"])
            for d in (reported if isinstance(reported, list) else [])
            if isinstance(d, dict) and d.get("device") == "disk" and d.get("path")
        ]
        learned = [key for key in paths if key in sized]
        counted.update(learned)
        disk_gib += max(known, sum(sized[key] for key in learned) / GIB)
        unknown += 0 if paths and len(learned) == len(paths) else missing
    disk_gib += sum(size for key, size in sized.items() if key not in counted) / GIB
    return Usage(
        domains=len(rows),
        vcpus=sum(r[1] for r in rows),
        memory_mib=sum(r[2] for r in rows),
        disk_gib=disk_gib,
        disks_of_unknown_size=unknown,
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
