"""CPU time and memory of running processes, read from /proc (Linux only)."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by the whole process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            raw = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    fields = raw.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def _status_kib(pid: int, keys: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in keys:
                    found[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def _pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


@dataclass(frozen=True)
class Memory:
    """VmRSS (all resident pages, shared libraries included: what `ps` and the targets mean),
    RssAnon (the process' own heap), PSS (shared pages divided among the processes sharing them:
    what N such processes really cost, divided by N)."""

    rss_mib: float
    anon_mib: float
    pss_mib: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {"rss_mib": self.rss_mib, "anon_mib": self.anon_mib, "pss_mib": self.pss_mib}


def memory(pid: int) -> Memory | None:
    kib = _status_kib(pid, ("VmRSS", "RssAnon"))
    if "VmRSS" not in kib:
        return None
    pss = _pss_kib(pid)
    return Memory(
        rss_mib=kib["VmRSS"] / 1024,
        anon_mib=kib.get("RssAnon", 0) / 1024,
        pss_mib=None if pss is None else pss / 1024,
    )


@dataclass(frozen=True)
class CpuUse:
    seconds: float  # user + system over the window
    wall_s: float

    @property
    def percent_of_core(self) -> float:
        return 100.0 * self.seconds / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "cpu_s": round(self.seconds, 3),
            "wall_s": round(self.wall_s, 3),
            "pct_core": round(self.percent_of_core, 1),
        }


class CpuWindow:
    """CPU seconds each of some processes used between `__init__` and `stop()`."""

    def __init__(self, pids: Mapping[str, Iterable[int]]) -> None:
        # name -> the pids counted together under it (e.g. "agents" -> 200 pids)
        self._pids = {name: list(group) for name, group in pids.items()}
        self._started = time.monotonic()
        self._before = {name: self._total(group) for name, group in self._pids.items()}

    @staticmethod
    def _total(pids: Iterable[int]) -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in pids)

    def stop(self) -> dict[str, CpuUse]:
        wall = time.monotonic() - self._started
        return {
            name: CpuUse(self._total(group) - self._before[name], wall) for name, group in self._pids.items()
        }


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all cores; /proc/stat minus idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def machine_steal_seconds() -> float:
    """CPU seconds the hypervisor gave to others while this machine's CPUs had work (/proc/stat's
    steal, all cores): counted in machine_cpu_seconds, though nothing here ran."""
    with open("/proc/stat", encoding="ascii") as stat:
        return int(stat.readline().split()[8]) / CLOCK_TICKS


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def ms(seconds: float | None) -> float | None:
    """Seconds in milliseconds, to 0.01 ms (None stays None)."""
    return None if seconds is None else round(seconds * 1000, 2)


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p90, p99, max and mean of durations given in seconds, in milliseconds."""
    return {
        "count": len(seconds),
        "p50_ms": ms(percentile(seconds, 50)),
        "p90_ms": ms(percentile(seconds, 90)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds) if seconds else None),
        "mean_ms": ms(statistics.fmean(seconds) if seconds else None),
    }
