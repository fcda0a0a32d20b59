"""Soak: consoles and event sockets opened and closed in waves, and whether the long-running
processes' memory plateaus (see bench/README.md).

    .venv/bin/python bench/soak_bench.py           # 100 waves x (100 consoles, 1,000 event sockets, 20 jobs)
    .venv/bin/python bench/soak_bench.py --quick   # 6 waves x (20 consoles, 100 event sockets, 4 jobs)

The stack is console_bench's (bench/console_paths.py, bench/console_stack.py): uvicorn (with
console.launcher.WEB_SOCKET_ARGS) and hostwatch, plus a Celery worker as make run starts it, and
the real agent on a test-driver node whose domains' VNC server is tests/agent/fake_vnc.py's, in
its own process. Each wave:

1. opens `--consoles` graphical consoles as the page does (a ticket from the API, then
   /ws/console/ with the site's Origin), one per domain, each with its VNC handshake, one
   keystroke echoed and `--bulk-kib` of screen bytes, then closes them all;
2. opens `--sockets` event sockets (/ws/events/ with a signed-in session's cookie and the
   Origin, as a browser does), waits until an event published on the channel layer reaches
   every one of them, then closes them all while three more events are published;
3. runs `--jobs` pause + resume job pairs through the worker (each on its own domain, not one
   of the consoles'): the worker calls the agent, hostwatch writes the state it reports and
   publishes it;
4. waits `--settle` seconds and reads, from /proc, the memory (VmRSS, RssAnon, Pss, USS), open
   file descriptors and threads of web, worker, hostwatch and agent (and the embedded Redis).

The curve (one reading per wave) is printed as a table and written, whole, to
bench/results/soak-<timestamp>.json, with a verdict per process: the least-squares slope of its
VmRSS over the last half of the waves, in KiB per 1,000 connections (consoles + event sockets),
plateau or growth. Everything it starts is stopped at the end, on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.console_measurements import memory_kib
from bench.console_paths import (
    OPEN_AT_ONCE,
    BenchAgent,
    BenchError,
    Children,
    Console,
    DomusPath,
    close_consoles,
    domus_setup,
    open_console,
    start_agent,
    start_fake_vnc,
)
from bench.console_stack import ConsoleStack, StackError, create_viewer, login_sessions
from bench.events_load import EventSockets
from bench.output import log, table
from bench.procstats import machine_cpu_seconds, summary_ms
from bench.session import begin, finish, header, sized

# The fitted VmRSS line over the last half of the waves may climb this much per 1,000
# connections and still be a plateau: 10 bytes a connection, 1 GiB per 100 million.
PLATEAU_KIB_PER_1000 = 10.0
# ... or this much in all over the last half, whatever the slope: page-sized steps of the heap
# and the allocator's arenas, which a short run cannot tell from a slope.
NOISE_KIB = 512.0
TARGETS = {
    "rss_slope_kib_per_1000_connections": PLATEAU_KIB_PER_1000,
    "or_climb_over_last_half_kib": NOISE_KIB,
}
# 10 job pairs a wave: 2,000 jobs in a run, past what the agent's idempotency store keeps (1,000
# answers) and Celery's record of finished tasks (1,000), so that their filling is not read as growth.
FULL: dict[str, int] = {"waves": 100, "consoles": 100, "sockets": 1000, "jobs": 10}
QUICK: dict[str, int] = {"waves": 6, "consoles": 20, "sockets": 100, "jobs": 2}
PROCESSES = ("web", "worker", "hostwatch", "agent")  # judged; redis is read too, not judged
JOB_TIMEOUT_S = 60.0
PROBE_APP = "bench.soak_probe:application"
TRAFFIC_TIMEOUT_S = 30.0


class SoakStack(ConsoleStack):
    """The benchmarks' console stack with a Celery worker too, started as make run starts it
    (console/launcher.py: the threads pool, 4 of them)."""

    def start(self) -> None:
        super().start()
        self._spawn(
            "worker",
            [
                *(sys.executable, "-m", "celery", "-A", "console", "--quiet", "worker"),
                *("--pool", "threads", "--concurrency", "4", "--loglevel", "WARNING"),
                *("-n", f"soak-{self.port}@%h"),
            ],
        )

    def wait_healthy(self, timeout: float = 90) -> None:
        """Until /healthz says 200: the worker answers its ping."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(self.url + "/healthz", timeout=3) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return
            time.sleep(0.5)
        raise StackError(f"the console is not healthy after {timeout:.0f} s:\n{self.log('worker')}")


# -- /proc readings ------------------------------------------------------------------------------


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _threads(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def reading(pids: dict[str, int]) -> dict[str, dict[str, int | None]]:
    """Memory (KiB), open file descriptors and threads of each process, now."""
    return {
        name: {**memory_kib(pid), "fds": _fds(pid), "threads": _threads(pid)} for name, pid in pids.items()
    }


# -- one wave --------------------------------------------------------------------------------------


async def console_wave(
    path: DomusPath, session: aiohttp.ClientSession, count: int, bulk: int, wave: int
) -> dict[str, Any]:
    """`count` consoles opened (OPEN_AT_ONCE at a time), a keystroke and `bulk` bytes on each,
    all closed; what failed is counted, not raised (a soak goes on)."""
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    opened: list[Console] = []
    open_s: list[float] = []
    errors: list[str] = []

    async def one(index: int) -> None:
        async with gate:
            started = time.perf_counter()
            try:
                console = await open_console(path, session, index)
            except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as err:
                errors.append(f"open: {err!r}"[:200])
                return
            open_s.append(time.perf_counter() - started)
            opened.append(console)

    await asyncio.gather(*(one(i) for i in range(count)))

    async def traffic(console: Console, keysym: int) -> None:
        try:
            async with asyncio.timeout(TRAFFIC_TIMEOUT_S):
                await console.round_trip(keysym)
                if bulk:
                    await console.bulk(bulk)
        except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as err:
            errors.append(f"traffic: {err!r}"[:200])

    await asyncio.gather(*(traffic(c, 0x61 + (wave + i) % 26) for i, c in enumerate(opened)))
    await close_consoles(opened)
    return {"opened": len(opened), "errors": errors, "open": summary_ms(open_s)}


async def _publish_while_closing(host_id: int) -> None:
    """A few events on their way while the sockets close, as a busy fleet's are while tabs close."""
    from console.realtime.events import apublish

    for n in range(3):
        host = {"id": host_id, "name": f"soak-closing-{n}", "state": "online", "detail": "", "teams": []}
        await apublish({"type": "host.state", "host": host})
        await asyncio.sleep(0.02)


async def socket_wave(url: str, keys: Sequence[str], host_id: int) -> dict[str, Any]:
    """Every session's event socket opened, an event that reaches them all, all closed (with
    a few more events on their way meanwhile)."""
    sockets = EventSockets(url, keys)
    out: dict[str, Any] = {"opened": 0, "errors": []}
    started = time.monotonic()
    try:
        await sockets.open(concurrency=OPEN_AT_ONCE)
        out["opened"] = len(sockets.sockets)
        out["open_s"] = round(time.monotonic() - started, 2)
        out["subscribed_s"] = round(await sockets.wait_subscribed(host_id), 2)
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        out["errors"].append(repr(err)[:200])
    finally:
        await asyncio.gather(sockets.close(), _publish_while_closing(host_id))
    out["messages"] = sum(sockets.stats.messages.values())
    return out


async def job_wave(
    url: str, token: str, session: aiohttp.ClientSession, domain_ids: Sequence[int]
) -> dict[str, Any]:
    """A pause then a resume job on each domain (at the same time across domains), each
    waited for until it has finished."""
    auth = {"Authorization": f"Token {token}"}
    errors: list[str] = []
    took: list[float] = []

    async def job(domain_id: int, action: str) -> None:
        started = time.perf_counter()
        async with session.post(f"{url}/api/v1/domains/{domain_id}/{action}/", headers=auth) as resp:
            body = await resp.json()
            if resp.status != 202:
                errors.append(f"{action} {domain_id}: {resp.status} {body}"[:200])
                return
        job_id = body["job"]["id"]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            async with session.get(f"{url}/api/v1/jobs/{job_id}/", headers=auth) as resp:
                status = (await resp.json()).get("status")
            if status == "succeeded":
                took.append(time.perf_counter() - started)
                return
            if status in ("failed", "cancelled"):
                errors.append(f"{action} {domain_id}: job {job_id} {status}")
                return
            await asyncio.sleep(0.05)
        errors.append(f"{action} {domain_id}: job {job_id} not finished after {JOB_TIMEOUT_S:.0f} s")

    async def pair(domain_id: int) -> None:
        try:
            await job(domain_id, "pause")
            await job(domain_id, "resume")
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            errors.append(repr(err)[:200])

    await asyncio.gather(*(pair(d) for d in domain_ids))
    return {"done": len(took), "errors": errors, "job": summary_ms(took)}


async def soak(
    args: argparse.Namespace,
    stack: SoakStack,
    agent: BenchAgent,
    pids: dict[str, int],
    token: str,
    domain_ids: list[int],
    keys: list[str],
    host_id: int,
) -> dict[str, Any]:
    # The agent's domains: the consoles' (at least one), then the jobs'.
    consoles_end = max(args.consoles, 1)
    console_ids, job_ids = domain_ids[:consoles_end], domain_ids[consoles_end : consoles_end + args.jobs]
    path = DomusPath(stack.url, token, console_ids)
    curve: list[dict[str, Any]] = []
    totals = {"consoles": 0, "sockets": 0, "jobs": 0}
    started = time.monotonic()

    def sample(wave: int, took: float, detail: dict[str, Any]) -> dict[str, Any]:
        stack.check_alive()
        point = {
            "wave": wave,
            **totals,
            "connections": totals["consoles"] + totals["sockets"],
            "at_s": round(time.monotonic() - started, 1),
            "wave_s": round(took, 2),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "procs": reading(pids),
            **detail,
        }
        curve.append(point)
        return point

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def probed(point: dict[str, Any]) -> None:
            if not args.probe:  # after /proc's reading, so that its own allocations are not in it
                return
            for key, url, headers in (
                ("probe", stack.url, {}),
                ("agent_probe", agent.url, {"Authorization": f"Bearer {agent.secret}"}),
            ):
                async with session.get(url + "/_soak/probe", headers=headers) as resp:
                    resp.raise_for_status()
                    point[key] = await resp.json()

        await asyncio.sleep(args.settle)
        await probed(sample(0, 0.0, {}))
        log("wave 0 (before any): " + _line(curve[-1]))
        for wave in range(1, args.waves + 1):
            wave_started = time.monotonic()
            detail: dict[str, Any] = {}
            if args.consoles:
                detail["console_wave"] = await console_wave(
                    path, session, args.consoles, args.bulk_kib * 1024, wave
                )
                totals["consoles"] += detail["console_wave"]["opened"]
            if keys:
                detail["socket_wave"] = await socket_wave(stack.url, keys, host_id)
                totals["sockets"] += detail["socket_wave"]["opened"]
            if job_ids:
                detail["job_wave"] = await job_wave(stack.url, token, session, job_ids)
                totals["jobs"] += detail["job_wave"]["done"]
            took = time.monotonic() - wave_started
            await asyncio.sleep(args.settle)
            point = sample(wave, took, detail)
            await probed(point)
            errors = sum(len(d.get("errors", [])) for d in detail.values())
            log(
                f"wave {wave}/{args.waves} ({took:.1f} s"
                f"{f', {errors} errors' if errors else ''}): {_line(point)}"
            )
    return {"curve": curve, "totals": totals, "soak_s": round(time.monotonic() - started, 1)}


def _line(point: dict[str, Any]) -> str:
    procs = point["procs"]
    return (
        ", ".join(
            f"{name} {_mib(procs[name].get('VmRSS'))}" for name in (*PROCESSES, "redis") if name in procs
        )
        + " MiB"
    )


def _num(value: float | None) -> str:
    return "-" if value is None else str(value)


def _mib(kib: int | float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


# -- the verdict -----------------------------------------------------------------------------------


def _fit(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over xs (None for fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def _slopes(points: Sequence[dict[str, Any]], name: str) -> tuple[float | None, float, float]:
    """VmRSS of `name` over `points`: fitted KiB per 1,000 connections (None without any),
    KiB per wave, and the fitted line's climb from the first point to the last (KiB)."""
    ys = [float(p["procs"][name]["VmRSS"]) for p in points]
    by_conn = _fit([float(p["connections"]) for p in points], ys)
    per_wave = _fit([float(p["wave"]) for p in points], ys) or 0.0
    climb = per_wave * (points[-1]["wave"] - points[0]["wave"])
    return None if by_conn is None else by_conn * 1000, per_wave, climb


def _grows(per_conn: float | None, climb: float, noise: float) -> bool:
    # Without connections (a jobs-only run) the climb alone decides.
    return climb > noise and (per_conn is None or per_conn > PLATEAU_KIB_PER_1000)


def verdicts(curve: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per process: VmRSS before, after the first wave and at the end, and the fitted slopes over
    the last half and the last quarter of the waves (KiB per 1,000 connections, and per wave).

    growth: both slopes over the limit, as a leak's are (it is linear); settling: the last half
    over it but the last quarter not (a process reaching its plateau: the allocator's high-water
    marks, a bounded cache filling); plateau: neither."""
    waves = [p for p in curve if p["wave"] > 0]
    if not waves:
        return {}
    half = waves[len(waves) // 2 :] if len(waves) > 1 else waves
    quarter = waves[3 * len(waves) // 4 :]
    out: dict[str, dict[str, Any]] = {}
    for name in curve[0]["procs"]:
        if any(p["procs"][name].get("VmRSS") is None for p in waves):
            continue
        per_conn, per_wave, climb = _slopes(half, name)
        verdict = "plateau"
        if _grows(per_conn, climb, NOISE_KIB):
            verdict = "growth"
            if len(quarter) >= 4:
                q_conn, _q_wave, q_climb = _slopes(quarter, name)
                if not _grows(q_conn, q_climb, NOISE_KIB * len(quarter) / len(half)):
                    verdict = "settling"
        q_per_conn, q_per_wave, _ = _slopes(quarter, name) if len(quarter) >= 2 else (None, 0.0, 0.0)
        out[name] = {
            "rss_before_kib": curve[0]["procs"][name].get("VmRSS"),
            "rss_after_first_wave_kib": waves[0]["procs"][name].get("VmRSS"),
            "rss_last_kib": waves[-1]["procs"][name].get("VmRSS"),
            "rss_max_kib": max(p["procs"][name].get("VmRSS") or 0 for p in waves),
            "anon_last_kib": waves[-1]["procs"][name].get("RssAnon"),
            "last_half_waves": [half[0]["wave"], half[-1]["wave"]],
            "slope_kib_per_1000_connections": None if per_conn is None else round(per_conn, 2),
            "slope_kib_per_wave": round(per_wave, 1),
            "climb_over_last_half_kib": round(climb, 1),
            "last_quarter_kib_per_1000_connections": None if q_per_conn is None else round(q_per_conn, 2),
            "last_quarter_kib_per_wave": round(q_per_wave, 1),
            "fds_before_last": [p["procs"][name].get("fds") for p in (curve[0], waves[-1])],
            "verdict": verdict,
            "judged": name in PROCESSES,
        }
    return out


# Where --probe's readings of each process are kept in a wave's point.
PROBED = {"web": "probe", "agent": "agent_probe"}


def probe_summary(curve: Sequence[dict[str, Any]], process: str = "web") -> dict[str, Any] | None:
    """A process's heap over the last half of the waves (--probe): the fitted slope per wave of
    each figure bench/heap_probe.py reads, beside VmRSS's, and the types whose count grew from
    the half's first wave to the last."""
    key = PROBED[process]
    waves = [p for p in curve if p["wave"] > 0 and key in p]
    if len(waves) < 2:
        return None
    half = waves[len(waves) // 2 :]
    xs = [float(p["wave"]) for p in half]

    def slope(values: list[float]) -> float:
        return round(_fit(xs, values) or 0.0, 1)

    figures: dict[str, list[float]] = {
        "VmRSS KiB": [float(p["procs"][process]["VmRSS"]) for p in half],
        "pymalloc blocks": [float(p[key]["pymalloc_blocks"]) for p in half],
        "gc objects": [float(p[key]["gc_objects"]) for p in half],
    }
    if half[0][key].get("malloc"):
        for field in ("in_use", "free", "arena", "mmapped"):
            figures[f"malloc {field} KiB"] = [p[key]["malloc"][field] / 1024 for p in half]
    for kind in half[-1][key].get("rss_kib", {}):
        figures[f"rss {kind} KiB"] = [float(p[key].get("rss_kib", {}).get(kind, 0)) for p in half]
    first, last = half[0][key]["types"], half[-1][key]["types"]
    grew = {name: last[name] - first.get(name, 0) for name in last if last[name] > first.get(name, 0)}
    return {
        "waves": [half[0]["wave"], half[-1]["wave"]],
        "per_wave": {name: slope(values) for name, values in figures.items()},
        "first_last": {name: [round(values[0]), round(values[-1])] for name, values in figures.items()},
        "types_grown": dict(sorted(grew.items(), key=lambda kv: -kv[1])[:15]),
    }


# -- report ----------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    p, machine, m = results["params"], results["machine"], results["measured"]
    curve = m["curve"]
    names = [n for n in (*PROCESSES, "redis") if n in curve[0]["procs"]]
    lines = [
        f"{machine['cpus']} CPUs, busy {machine['background_busy_pct_core']}% of a core before start, "
        f"machine {m['machine_pct_core']}% of a core during the soak; {results['database']}; "
        f"MALLOC_ARENA_MAX={p['malloc_arena_max'] or 'unset'}; web app {p['web_app']}",
        f"{p['waves']} waves x ({p['consoles']} consoles + {p['sockets']} event sockets"
        f" + {p['jobs']} x 2 jobs):"
        f" {m['totals']['consoles']:,} consoles, {m['totals']['sockets']:,} event sockets,"
        f" {m['totals']['jobs']:,} jobs in {m['soak_s']:,} s (whole run {results['run_s']:,} s)",
        "",
        "VmRSS MiB after each wave (the whole curve, with RssAnon, Pss, USS, fds and threads: the JSON):",
    ]
    every = max(1, len(curve) // 20)
    shown = [pt for i, pt in enumerate(curve) if i % every == 0 or i == len(curve) - 1]
    rows: list[list[str]] = [["wave", "connections", *names, "wave s", "load 1m"]]
    for pt in shown:
        rows.append(
            [
                str(pt["wave"]),
                f"{pt['connections']:,}",
                *(_mib(pt["procs"][n].get("VmRSS")) for n in names),
                str(pt["wave_s"]),
                str(pt["loadavg_1m"]),
            ]
        )
    lines += table(rows)
    lines += [
        "",
        "verdict (least-squares slopes of VmRSS over the last half and the last quarter of the waves):",
    ]
    rows = [
        [
            "process",
            "before",
            "wave 1",
            "last",
            "max MiB",
            "KiB/1k conn",
            "KiB/wave",
            "climb KiB",
            "last 1/4: KiB/1k, /wave",
            "fds",
            "verdict",
        ]
    ]
    for name, v in m["verdicts"].items():
        rows.append(
            [
                name,
                _mib(v["rss_before_kib"]),
                _mib(v["rss_after_first_wave_kib"]),
                _mib(v["rss_last_kib"]),
                _mib(v["rss_max_kib"]),
                "-"
                if v["slope_kib_per_1000_connections"] is None
                else str(v["slope_kib_per_1000_connections"]),
                str(v["slope_kib_per_wave"]),
                str(v["climb_over_last_half_kib"]),
                f"{_num(v['last_quarter_kib_per_1000_connections'])}, {v['last_quarter_kib_per_wave']}",
                " -> ".join(str(f) for f in v["fds_before_last"]),
                (v["verdict"].upper() if v["judged"] else f"({v['verdict']})"),
            ]
        )
    lines += table(rows)
    lines += [
        f"  growth: over the last half, a slope > {PLATEAU_KIB_PER_1000:g} KiB per 1,000 connections and a"
        f" climb of the fitted line > {NOISE_KIB:g} KiB, and over the last quarter too (pro rata);",
        "  settling: the last half grows, the last quarter does not (reaching its plateau); plateau: neither",
        "",
        f"errors: {m['errors']} (sample: {m['error_sample']})" if m["errors"] else "errors: none",
        "latency over all waves: console open p50/p99 "
        f"{m['console_open']['p50_ms']} / {m['console_open']['p99_ms']} ms; job p50/p99"
        f" {m['job']['p50_ms']} / {m['job']['p99_ms']} ms",
    ]
    for process, key in PROBED.items():
        if not (probe := m.get(key)):
            continue
        lines += [
            "",
            f"{process} process's heap over waves {probe['waves'][0]}-{probe['waves'][1]} (--probe):",
        ]
        rows = [["figure", "first", "last", "fitted per wave"]]
        for name, per_wave in probe["per_wave"].items():
            first, last = probe["first_last"][name]
            rows.append([name, f"{first:,}", f"{last:,}", str(per_wave)])
        lines += table(rows)
        grown = ", ".join(f"{name} +{n}" for name, n in probe["types_grown"].items()) or "none"
        lines.append(f"  object types that grew: {grown}")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run: a few small waves")
    parser.add_argument(
        "--waves", type=int, help=f"waves (default {FULL['waves']}, --quick {QUICK['waves']})"
    )
    parser.add_argument(
        "--consoles",
        type=int,
        help=f"graphical consoles per wave (default {FULL['consoles']}, --quick {QUICK['consoles']})",
    )
    parser.add_argument(
        "--sockets",
        type=int,
        help=f"event sockets per wave (default {FULL['sockets']}, --quick {QUICK['sockets']})",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help=f"pause + resume job pairs per wave (default {FULL['jobs']}, --quick {QUICK['jobs']})",
    )
    parser.add_argument("--bulk-kib", type=int, default=64, help="screen bytes each console reads (64)")
    parser.add_argument(
        "--users", type=int, default=10, help="signed-in users the event sockets belong to (10)"
    )
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after a wave before reading (1)")
    parser.add_argument(
        "--malloc-arena-max",
        type=int,
        default=0,
        metavar="N",
        help="MALLOC_ARENA_MAX for every process started (glibc's arenas; default: unset)",
    )
    parser.add_argument(
        "--web-app",
        default="console.asgi:application",
        help="ASGI application uvicorn serves (an experiment's wrapper module must be importable)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="read, after each wave, what the web process's and the agent's heaps hold (glibc's bytes"
        " in use and free, pymalloc blocks, objects by type: bench/heap_probe.py)",
    )
    parser.add_argument("--workdir", type=Path, help="data directory (default /tmp/domus-bench-<timestamp>)")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/soak-<timestamp>.json)")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print a saved run's report again (verdicts recomputed)"
    )
    args = parser.parse_args(argv)
    if args.probe:
        args.web_app = PROBE_APP
    return sized(args, QUICK, FULL)


def run(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if args.malloc_arena_max:  # inherited by everything started from here on
        os.environ["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    stack = SoakStack(workdir / "console", log_level="WARNING", web_app=args.web_app)
    children = Children(workdir)
    try:
        stack.prepare()
        source_port = start_fake_vnc(children, "a5")
        # One domain per console of a wave (only a viewer holding control types), and the jobs' own.
        agent = start_agent(children, source_port, max(args.consoles, 1) + args.jobs, probe=args.probe)
        stack.start()
        results["database"] = stack.database
        log(f"console on {stack.url}, agent on {agent.url}, fake VNC server on :{source_port}")
        token, domain_ids = domus_setup(stack, agent, children)
        stack.wait_healthy()
        keys: list[str] = []
        if args.sockets:
            users = max(1, min(args.users, args.sockets))
            for u in range(users):
                share = args.sockets // users + (1 if u < args.sockets % users else 0)
                keys += login_sessions(create_viewer(f"soak-viewer-{u}"), share)
        from hosts.models import Host  # Django is set up by now

        host_id = Host.objects.get(name="bench-vnc").pk
        pids = {
            "web": stack.pid("web"),
            "worker": stack.pid("worker"),
            "hostwatch": stack.pid("hostwatch"),
            "agent": children.pid("agent"),
        }
        if stack.redis_pid is not None:
            pids["redis"] = stack.redis_pid
        log("pids: " + ", ".join(f"{name} {pid}" for name, pid in pids.items()))
        busy = machine_cpu_seconds()
        measured = asyncio.run(soak(args, stack, agent, pids, token, domain_ids, keys, host_id))
        measured["machine_pct_core"] = round(100 * (machine_cpu_seconds() - busy) / measured["soak_s"], 1)
        stack.check_alive()
        children.check_alive()
        results["measured"] = measured
    finally:
        log("stopping everything started")
        children.stop()
        stack.stop()


def summarise(measured: dict[str, Any]) -> None:
    curve = measured["curve"]
    measured["verdicts"] = verdicts(curve)
    errors = [
        e
        for pt in curve
        for key in ("console_wave", "socket_wave", "job_wave")
        for e in pt.get(key, {}).get("errors", [])
    ]
    measured["errors"] = len(errors)
    measured["error_sample"] = errors[:3]

    def merged(key: str, stat: str) -> dict[str, Any]:
        # p50/p99 over the waves' own p50/p99s: enough to see a trend, not a true percentile
        values = [pt[key][stat]["p50_ms"] for pt in curve if key in pt and pt[key][stat]["count"]]
        tails = [pt[key][stat]["p99_ms"] for pt in curve if key in pt and pt[key][stat]["count"]]
        return {
            "p50_ms": round(statistics.median(values), 2) if values else None,
            "p99_ms": round(max(tails), 2) if tails else None,
        }

    for process, key in PROBED.items():
        measured[key] = probe_summary(curve, process)
    measured["console_open"] = merged("console_wave", "open")
    measured["job"] = merged("job_wave", "job")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        results = json.loads(args.report.read_text())
        summarise(results["measured"])
        print(render(results))
        return 0
    session = begin("soak", args.workdir, args.output)
    params: dict[str, Any] = {key: getattr(args, key) for key in FULL}
    params.update(
        {
            "bulk_kib": args.bulk_kib,
            "users": args.users,
            "settle_s": args.settle,
            "malloc_arena_max": args.malloc_arena_max,
            "web_app": args.web_app,
            "probe": args.probe,
        }
    )
    results = header(session, params, TARGETS, quiet_s=2)
    log(f"machine busy before start: {results['machine']['background_busy_pct_core']}% of a core")
    started = time.monotonic()
    try:
        run(args, session.workdir, results)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    except (BenchError, StackError) as err:
        log(f"failed: {err}")
        return 1
    results["run_s"] = round(time.monotonic() - started, 1)
    summarise(results["measured"])
    return finish(session, results, render)


if __name__ == "__main__":
    sys.exit(main())
