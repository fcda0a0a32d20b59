"""What the console benchmark measures on each path (see bench/README.md): bulk throughput,
keystroke echo round trips, many consoles streaming at once and the memory of open idle
consoles; and, from /proc, the CPU and memory of every process on the path meanwhile."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.console_paths import (
    MB,
    BenchError,
    ProxyPath,
    Transfer,
    close_consoles,
    open_console,
    open_consoles,
)
from bench.output import log

if TYPE_CHECKING:
    import aiohttp

MIB = 1024 * 1024
# A console that finishes later than this many times the median finish time counts as starved.
STARVED_AFTER_MEDIAN_TIMES = 2.0


# -- /proc: CPU and memory of the processes on each path ----------------------------------------


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (websockify's per-connection processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon (/proc/<pid>/status), Pss and USS (private pages, clean + dirty: what
    the process alone holds) from /proc/<pid>/smaps_rollup; KiB. Empty once it has exited."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(rest.split()[0])
    with contextlib.suppress(OSError):
        rollup = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            rollup[key] = int(rest.split()[0])
        out["Pss"] = rollup.get("Pss", 0)
        out["USS"] = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    return out


def memory_sum_kib(pids: Sequence[int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for pid in pids:
        for key, value in memory_kib(pid).items():
            total[key] = total.get(key, 0) + value
    return total


@dataclass
class Processes:
    """Who is on a path, by role, for CPU windows (pids read when a window opens)."""

    roles: dict[str, Callable[[], list[int]]]

    def pids(self) -> dict[str, list[int]]:
        return {name: pids() for name, pids in self.roles.items()}


def sched_totals(pid: int) -> tuple[float, float, int]:
    """CPU seconds, seconds spent runnable but waiting for a CPU, and times put on a CPU, of
    all of a process's threads so far, from schedstat (nanoseconds: /proc/<pid>/stat counts
    10 ms ticks, and a websockify connection process streaming 8 MiB uses a few ms)."""
    on_cpu = waited = slices = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
                on_cpu, waited, slices = (
                    on_cpu + int(fields[0]),
                    waited + int(fields[1]),
                    slices + int(fields[2]),
                )
    return on_cpu / 1e9, waited / 1e9, slices


@dataclass
class CpuUse:
    """CPU seconds of each process on a path over some wall time, the seconds each waited,
    runnable, for a CPU, and the times each was put on one (woken, or its turn again after
    another's); windows add up."""

    seconds: dict[str, float]
    wall_s: float
    machine_s: float
    processes: dict[str, int]  # how many processes each name stands for
    waited: dict[str, float] = field(default_factory=dict)
    slices: dict[str, int] = field(default_factory=dict)
    stolen_s: float = 0.0  # of machine_s: the hypervisor ran something else (a virtual machine)

    def __add__(self, other: CpuUse) -> CpuUse:
        names = {**self.seconds, **other.seconds}
        return CpuUse(
            {n: self.seconds.get(n, 0.0) + other.seconds.get(n, 0.0) for n in names},
            self.wall_s + other.wall_s,
            self.machine_s + other.machine_s,
            {n: max(self.processes.get(n, 0), other.processes.get(n, 0)) for n in names},
            {n: self.waited.get(n, 0.0) + other.waited.get(n, 0.0) for n in names},
            {n: self.slices.get(n, 0) + other.slices.get(n, 0) for n in names},
            self.stolen_s + other.stolen_s,
        )

    def pct_core(self) -> dict[str, float]:
        return {n: round(100 * s / self.wall_s, 1) for n, s in self.seconds.items()}

    def as_dict(self) -> dict[str, Any]:
        cpus = os.cpu_count() or 1
        return {
            "pct_core": self.pct_core(),
            # per process of the group: websockify's are one per connection
            "waited_pct_wall": {
                n: round(100 * s / self.wall_s / max(1, self.processes.get(n, 1)), 1)
                for n, s in self.waited.items()
            },
            "slices": self.slices,
            "processes": self.processes,
            "machine_pct": round(100 * self.machine_s / self.wall_s, 1),
            "stolen_pct": round(100 * self.stolen_s / self.wall_s, 1),
            "wall_s": round(self.wall_s, 3),
            "limited_by": self.limited_by(cpus),
        }

    def limited_by(self, cpus: int) -> str:
        """What most likely held the number back: one process at a full core (its event loop
        is one thread: it can go no faster), else the machine's CPUs all busy (the processes
        on the path take turns on them), else neither (waiting on each other: latency)."""
        single = {n: p for n, p in self.pct_core().items() if self.processes.get(n) == 1}
        busiest, pct = max(single.items(), key=lambda item: item[1])
        machine = 100 * self.machine_s / self.wall_s
        if pct >= 85:
            return f"{busiest}'s one thread at {pct:.0f}% of a core (machine {machine:.0f}%)"
        active = sum(1 for v in self.pct_core().values() if v >= 10)
        if machine >= 75 * cpus:
            stolen = 100 * self.stolen_s / self.wall_s
            of_which = f", {stolen:.0f}% of it stolen by the hypervisor" if stolen >= 10 else ""
            return (
                f"the CPUs: {active} busy processes share {cpus} ({machine:.0f}% of {cpus * 100}%{of_which})"
            )
        return f"no CPU saturated (busiest: {busiest} {pct:.0f}%, machine {machine:.0f}%): hand-offs"


async def with_cpu(processes: Processes, work: Awaitable[Any]) -> tuple[Any, CpuUse]:
    """Run `work` and measure the CPU each process on the path used meanwhile."""
    from bench.procstats import machine_cpu_seconds, machine_steal_seconds

    pids = processes.pids()
    before = {name: [sched_totals(p) for p in group] for name, group in pids.items()}
    busy, stolen, started = machine_cpu_seconds(), machine_steal_seconds(), time.perf_counter()
    result = await work
    wall = time.perf_counter() - started
    after = {name: [sched_totals(p) for p in group] for name, group in pids.items()}

    def used(name: str, field: int) -> float:
        return max(0.0, sum(a[field] for a in after[name]) - sum(b[field] for b in before[name]))

    return result, CpuUse(
        {name: used(name, 0) for name in pids},
        wall,
        machine_cpu_seconds() - busy,
        {name: len(group) for name, group in pids.items()},
        {name: used(name, 1) for name in pids},
        {name: int(used(name, 2)) for name in pids},
        machine_steal_seconds() - stolen,
    )


# -- the measurements --------------------------------------------------------------------------


@dataclass
class PathUnderTest:
    path: ProxyPath
    processes: Processes
    proxies: tuple[str, ...]  # the processes between the client and the source

    def proxy_cpu_s_per_gb(self, use: CpuUse, size: int) -> float:
        """CPU seconds the proxies spent per GB through them: the cost of the path, whatever
        the machine's size."""
        return round(sum(use.seconds[n] for n in self.proxies) / (size / 1e9), 3)

    def path_cpu_s_per_gb(self, use: CpuUse, size: int) -> float:
        """The same for every process the bytes cross, the client and the source too (frame
        sizes change what the client pays): what decides the rate when they share too few CPUs."""
        return round(sum(use.seconds[n] for n in (*self.proxies, "client", "source")) / (size / 1e9), 3)

    # What to weigh for memory: name -> pids, read when asked (websockify's children change).
    memory_roles: dict[str, Callable[[], list[int]]] = field(default_factory=dict)


async def measure_bulk(
    paths: Sequence[PathUnderTest],
    session: aiohttp.ClientSession,
    size: int,
    runs: int,
    *,
    compress: int = 0,
) -> dict[str, Any]:
    """One console per path; the runs alternate between the paths, so that whatever else the
    machine does weighs on both alike."""
    consoles = [await open_console(p.path, session, 0, compress=compress) for p in paths]
    transfers: dict[str, list[Transfer]] = {p.path.name: [] for p in paths}
    cpu: dict[str, list[CpuUse]] = {p.path.name: [] for p in paths}
    try:
        for console in consoles:  # untimed: the first run pays for buffers growing on the way
            await console.bulk(size)
        for _ in range(runs):
            for put, console in zip(paths, consoles, strict=True):
                transfer, report = await with_cpu(put.processes, console.bulk(size))
                transfers[put.path.name].append(transfer)
                cpu[put.path.name].append(report)
    finally:
        await close_consoles(consoles)
    out: dict[str, Any] = {}
    for put in paths:
        name = put.path.name
        done = transfers[name]
        used = sum(cpu[name][1:], cpu[name][0])  # over all the runs
        rates = [t.mb_s for t in done]
        frames = sum(t.frames for t in done)
        out[name] = {
            "size_mib": size / MIB,
            "runs_mb_s": [round(r, 1) for r in rates],
            "median_mb_s": round(statistics.median(rates), 1),
            "frames": frames,
            "mean_frame_kib": round(sum(t.size for t in done) / frames / 1024, 1),
            "first_byte_ms": [round((t.first_byte - t.started) * 1000, 2) for t in done],
            "cpu": used.as_dict(),
            "proxy_cpu_s_per_gb": put.proxy_cpu_s_per_gb(used, size * runs),
            "path_cpu_s_per_gb": put.path_cpu_s_per_gb(used, size * runs),
            "slices_per_mb": {n: round(k / (size * runs / MB), 1) for n, k in used.slices.items()},
        }
    return out


async def measure_raw_tcp(port: int, size: int, runs: int) -> dict[str, Any]:
    """The source's ceiling: the same bulk read straight from its TCP socket, no WebSocket."""
    from agent.rfb import VERSION_38
    from tests.agent.fake_vnc import cut_text

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readexactly(12)
        writer.write(VERSION_38)
        count = (await reader.readexactly(1))[0]
        await reader.readexactly(count)
        writer.write(b"\x01")
        await reader.readexactly(4)
        writer.write(b"\x01")
        head = await reader.readexactly(24)
        await reader.readexactly(int.from_bytes(head[20:24], "big"))
        rates = []
        for _ in range(runs):
            started = time.perf_counter()
            writer.write(cut_text(f"bulk {size}".encode()))
            got = 0
            while got < size:
                chunk = await reader.read(1024 * 1024)
                if not chunk:
                    raise BenchError("the fake VNC server closed the raw connection")
                got += len(chunk)
            rates.append(size / MB / (time.perf_counter() - started))
    finally:
        writer.close()
    return {"runs_mb_s": [round(r, 1) for r in rates], "median_mb_s": round(statistics.median(rates), 1)}


async def measure_echo(
    paths: Sequence[PathUnderTest], session: aiohttp.ClientSession, count: int, warmup: int
) -> dict[str, Any]:
    """Keystroke echo round trips, one at a time, on one console per path; the paths take
    turns in blocks of 100, again so that the machine's other work weighs on both alike."""
    from bench.procstats import summary_ms

    consoles = [await open_console(p.path, session, 0) for p in paths]
    times: dict[str, list[float]] = {p.path.name: [] for p in paths}
    try:
        for console in consoles:
            for i in range(warmup):
                await console.round_trip(0x61 + i % 26)
        done = 0
        while done < count:
            block = min(100, count - done)
            for put, console in zip(paths, consoles, strict=True):
                for i in range(block):
                    times[put.path.name].append(await console.round_trip(0x61 + i % 26))
            done += block
    finally:
        await close_consoles(consoles)
    return {name: summary_ms(t) for name, t in times.items()}


async def measure_streams(
    put: PathUnderTest, session: aiohttp.ClientSession, consoles_n: int, size: int
) -> dict[str, Any]:
    """`consoles_n` consoles ask for `size` bytes each at the same moment; how fast in all, and
    how evenly shared."""
    consoles = await open_consoles(put.path, session, consoles_n)
    try:
        started = time.perf_counter()
        transfers, cpu = await with_cpu(put.processes, asyncio.gather(*(c.bulk(size) for c in consoles)))
    finally:
        await close_consoles(consoles)
    finish = [t.ended - started for t in transfers]
    rates = [t.mb_s for t in transfers]
    median_finish = statistics.median(finish)
    starved = [i for i, f in enumerate(finish) if f > STARVED_AFTER_MEDIAN_TIMES * median_finish]
    jain = sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates))
    return {
        "consoles": consoles_n,
        "size_mib": size / MIB,
        "aggregate_mb_s": round(consoles_n * size / MB / max(finish), 1),
        "per_console_mb_s": {
            "min": round(min(rates), 2),
            "median": round(statistics.median(rates), 2),
            "max": round(max(rates), 2),
        },
        "jain_fairness": round(jain, 3),  # 1.0: every console got the same rate
        "finish_s": {
            "first": round(min(finish), 3),
            "median": round(median_finish, 3),
            "last": round(max(finish), 3),
        },
        "first_byte_ms_max": round(max(t.first_byte - started for t in transfers) * 1000, 1),
        "max_gap_ms": round(max(t.max_gap_s for t in transfers) * 1000, 1),
        "starved": len(starved),
        "cpu": cpu.as_dict(),
        "proxy_cpu_s_per_gb": put.proxy_cpu_s_per_gb(cpu, consoles_n * size),
    }


async def measure_memory(
    put: PathUnderTest, session: aiohttp.ClientSession, count: int, settle_s: float
) -> dict[str, Any]:
    """What `count` open idle consoles add to each process on the path (after a warm-up of a few
    consoles opened and closed, so that first-use costs are not counted), and what `count` more
    add once those are open: the first ones also pay for the allocator's growth while they open
    (memory it keeps and reuses), the next ones show what each open console holds."""
    warm = await open_consoles(put.path, session, 5, first=2 * count)
    await close_consoles(warm)
    await asyncio.sleep(settle_s)
    before = {name: memory_sum_kib(pids()) for name, pids in put.memory_roles.items()}
    consoles = await open_consoles(put.path, session, count)
    try:
        await asyncio.sleep(settle_s)
        during = {name: memory_sum_kib(pids()) for name, pids in put.memory_roles.items()}
        consoles += await open_consoles(put.path, session, count, first=count)
        await asyncio.sleep(settle_s)
        more = {name: memory_sum_kib(pids()) for name, pids in put.memory_roles.items()}
    finally:
        await close_consoles(consoles)
    await asyncio.sleep(settle_s)
    after = {name: memory_sum_kib(pids()) for name, pids in put.memory_roles.items()}
    out: dict[str, Any] = {"consoles": count}
    for name in put.memory_roles:
        keys = sorted(set(before[name]) | set(during[name]))
        out[name] = {
            "before_kib": before[name],
            "open_kib": during[name],
            "twice_as_many_open_kib": more[name],
            "after_close_kib": after[name],
            "per_console_kib": {
                k: round((during[name].get(k, 0) - before[name].get(k, 0)) / count, 1) for k in keys
            },
            "next_per_console_kib": {
                k: round((more[name].get(k, 0) - during[name].get(k, 0)) / count, 1) for k in keys
            },
        }
    return out


async def measure(
    args: argparse.Namespace, domus: PathUnderTest, wsfy: PathUnderTest, source_port: int
) -> dict[str, Any]:
    import aiohttp

    paths = (domus, wsfy)
    out: dict[str, Any] = {}
    # No connection limit: every open console holds one (the default limit is 100).
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        log(f"memory: {args.idle} idle consoles on each path")
        out["memory"] = {p.path.name: await measure_memory(p, session, args.idle, args.settle) for p in paths}
        size = args.bulk_mib * MIB
        log(f"bulk: {args.bulk_runs} x {args.bulk_mib} MiB, one console each (and the raw TCP source)")
        out["raw_tcp"] = await measure_raw_tcp(source_port, size, args.bulk_runs)
        out["bulk"] = await measure_bulk(paths, session, size, args.bulk_runs)
        log(f"echo: {args.echoes} keystroke round trips (+{args.echo_warmup} warm-up) each")
        out["echo"] = await measure_echo(paths, session, args.echoes, args.echo_warmup)
        log(f"streams: {args.streams} consoles x {args.stream_mib} MiB at once, each path")
        out["streams"] = {
            p.path.name: await measure_streams(p, session, args.streams, args.stream_mib * MIB) for p in paths
        }
        if args.deflate:
            # As browsers do: offer permessage-deflate (websockify ignores the offer).
            log("bulk again, the client offering permessage-deflate as browsers do")
            out["bulk_deflate"] = await measure_bulk(paths, session, size, args.bulk_runs, compress=15)
    return out
