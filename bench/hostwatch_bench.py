"""hostwatch at fleet scale: many agents, many domains, many browsers (see bench/README.md).

    .venv/bin/python bench/hostwatch_bench.py                 # 200 agents x 50 domains, 100 sockets
    .venv/bin/python bench/hostwatch_bench.py --quick         # 10 x 10, 5 sockets: under a minute

Starts a console stack (uvicorn + hostwatch, embedded SQLite and Redis unless DATABASE_URL /
REDIS_URL), test-driver agents registered as hosts and signed-in browser sockets; waits for the
fleet to be in the database; then measures idle cost, the latency from an agent call to the
`domain.state` event on every socket under a steady rate of state changes, and separately the
agent's time to read a 1,000-domain inventory. Prints a table and writes
bench/results/hostwatch-<timestamp>.json. Everything it starts is stopped on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.console_stack import (
    ConsoleStack,
    create_viewer,
    fleet_counts,
    login_sessions,
    register_hosts,
)
from bench.events_load import (
    AgentDomains,
    AgentTap,
    Change,
    ChangeDriver,
    EventSockets,
    PublishTap,
    change_records,
    change_report,
)
from bench.inventory import inventory_bench
from bench.output import log
from bench.procstats import CpuWindow, machine_cpu_seconds, memory, summary_ms
from bench.session import begin, finish, header, sized
from tests.fleet.testdriver import TestAgent, start_test_agents, stop_test_agents

TARGETS = {
    "latency_p99_ms": 200.0,
    "lost": 0,
    "agent_idle_rss_mib": 40.0,
    "inventory_1000_ms": 15.0,
}
FULL = {"agents": 200, "domains": 50, "sockets": 100, "changes": 600, "rate": 10.0, "idle": 15.0}
QUICK = {"agents": 10, "domains": 10, "sockets": 5, "changes": 40, "rate": 5.0, "idle": 5.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small defaults: 10 agents x 10 domains, 5 sockets"
    )
    parser.add_argument("--agents", type=int, help=f"agent processes (default {FULL['agents']})")
    parser.add_argument("--domains", type=int, help=f"domains per agent (default {FULL['domains']})")
    parser.add_argument("--sockets", type=int, help=f"browser event sockets (default {FULL['sockets']})")
    parser.add_argument("--changes", type=int, help=f"state changes to make (default {FULL['changes']})")
    parser.add_argument("--rate", type=float, help=f"state changes per second (default {FULL['rate']})")
    parser.add_argument("--idle", type=float, help=f"seconds of idle measurement (default {FULL['idle']})")
    parser.add_argument(
        "--deadline", type=float, default=5.0, help="seconds before a delivery counts as lost"
    )
    parser.add_argument("--inventory-domains", type=int, default=1000)
    parser.add_argument("--inventory-calls", type=int, default=50)
    parser.add_argument(
        "--no-taps", action="store_true", help="no stage taps (own agent sockets, Redis subscriber)"
    )
    parser.add_argument(
        "--web-app",
        default="console.asgi:application",
        help="ASGI application uvicorn serves (an experiment's wrapper module must be importable)",
    )
    parser.add_argument("--skip-fleet", action="store_true", help="only the inventory measurement")
    parser.add_argument("--skip-inventory", action="store_true", help="only the fleet measurement")
    parser.add_argument("--workdir", type=Path, help="data directory (default /tmp/domus-bench-<timestamp>)")
    parser.add_argument(
        "--output", type=Path, help="JSON file (default bench/results/hostwatch-<timestamp>.json)"
    )
    return sized(parser.parse_args(argv), QUICK, FULL)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def agent_memory(agents: list[TestAgent]) -> dict[str, Any]:
    mems = [m for m in (memory(a.proc.pid) for a in agents) if m is not None]
    rss = [m.rss_mib for m in mems]
    anon = [m.anon_mib for m in mems]
    pss = [m.pss_mib for m in mems if m.pss_mib is not None]
    return {
        "agents": len(mems),
        "rss_median_mib": _median(rss),
        "rss_max_mib": round(max(rss), 1) if rss else None,
        "anon_median_mib": _median(anon),
        "pss_median_mib": _median(pss),
        "pss_total_mib": round(sum(pss), 1) if pss else None,
    }


def _mem(pid: int | None) -> dict[str, float | None] | None:
    mem = memory(pid) if pid is not None else None
    return None if mem is None else {k: None if v is None else round(v, 1) for k, v in mem.as_dict().items()}


def _cpu(window: CpuWindow, busy_before: float) -> dict[str, Any]:
    used = {name: use.as_dict() for name, use in window.stop().items()}
    wall = next(iter(used.values()))["wall_s"] if used else 0.0
    used["machine"] = {
        "cpu_s": round(machine_cpu_seconds() - busy_before, 3),
        "wall_s": wall,
        "pct_core": round(100 * (machine_cpu_seconds() - busy_before) / wall, 1) if wall else 0.0,
    }
    return used


def _hostwatch_log_counts(stack: ConsoleStack) -> dict[str, int]:
    text = (stack.data_dir / "hostwatch.log").read_text(errors="replace")
    return {
        "offline_warnings": text.count(" offline: "),
        "errors": text.count(" ERROR "),
        "online_lines": text.count(" online: "),
    }


def _pids(stack: ConsoleStack, agents: list[TestAgent]) -> dict[str, list[int]]:
    pids = {
        "hostwatch": [stack.pid("hostwatch")],
        "web": [stack.pid("web")],
        "agents": [a.proc.pid for a in agents],
        "bench": [os.getpid()],
    }
    if stack.redis_pid is not None:
        pids["redis"] = [stack.redis_pid]
    return pids


def wait_quiet(limit_pct: float = 25.0, timeout: float = 20.0) -> float:
    """Wait (up to `timeout`) for a second in which the machine is busy less than `limit_pct` of a
    core, e.g. while 200 stopped agents are still exiting; returns the last second's busy %."""
    deadline = time.monotonic() + timeout
    while True:
        busy = machine_cpu_seconds()
        time.sleep(1.0)
        pct = 100 * (machine_cpu_seconds() - busy)
        if pct < limit_pct or time.monotonic() > deadline:
            return round(pct, 1)


def wait_synced(stack: ConsoleStack, hosts: int, domains: int, timeout: float) -> tuple[int, int, int]:
    deadline = time.monotonic() + timeout
    last_print = 0.0
    counts = (0, 0, 0)
    while time.monotonic() < deadline:
        stack.check_alive()
        counts = fleet_counts()
        if counts == (hosts, hosts, domains):
            return counts
        if time.monotonic() - last_print > 10:
            log(f"  ... {counts[0]}/{hosts} hosts online, {counts[2]}/{domains} domain rows")
            last_print = time.monotonic()
        time.sleep(0.25)
    raise TimeoutError(f"not synced after {timeout:.0f} s: online, hosts, domains = {counts}")


async def _sample_memory(pids: dict[str, int], peaks: dict[str, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for name, pid in pids.items():
            mem = memory(pid)
            if mem is not None:
                peaks[name] = max(peaks.get(name, 0.0), mem.rss_mib)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def _loop_lag(lags: list[float], stop: asyncio.Event, every: float = 0.01) -> None:
    """How late this process' own event loop wakes up: a busy benchmark would stamp arrivals late."""
    while not stop.is_set():
        started = time.monotonic()
        await asyncio.sleep(every)
        lags.append(time.monotonic() - started - every)


async def measure(
    args: argparse.Namespace,
    stack: ConsoleStack,
    agents: list[TestAgent],
    session_keys: list[str],
    probe_host_id: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sockets = EventSockets(stack.url, session_keys)
    started = time.monotonic()
    await sockets.open()
    out["sockets_open_s"] = round(time.monotonic() - started, 2)
    out["sockets_subscribed_s"] = round(await sockets.wait_subscribed(probe_host_id), 2)
    log(f"{sockets.count} browser sockets open and subscribed")
    taps: list[AgentTap | PublishTap] = []
    if not args.no_taps:
        taps = [AgentTap([(a.url, a.secret) for a in agents], sockets), PublishTap(sockets)]
        for tap in taps:
            await tap.open()
    sockets.reset_counters()
    pids = _pids(stack, agents)
    # This process stamps every arrival: keep its own full collections (Django and everything
    # set up so far would be walked each time) from showing up as event latency.
    gc.collect()
    gc.freeze()
    try:
        log(f"idle: {args.idle:.0f} s")
        busy = machine_cpu_seconds()
        window = CpuWindow(pids)
        await asyncio.sleep(args.idle)
        out["idle"] = {
            "cpu": _cpu(window, busy),
            "hostwatch_mem": _mem(stack.pid("hostwatch")),
            "web_mem": _mem(stack.pid("web")),
            "agents_mem": agent_memory(agents),
            "socket_messages": dict(sockets.reset_counters().messages),
        }

        log(f"load: {args.changes} changes at {args.rate:g}/s over {len(agents)} agents")
        fleet = [
            AgentDomains(a.name, a.url, a.secret, [(str(d.uuid), d.running) for d in a.domains])
            for a in agents
        ]
        driver = ChangeDriver(fleet, sockets, deadline_s=args.deadline)
        peaks: dict[str, float] = {}
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(
            _sample_memory(
                {"hostwatch": stack.pid("hostwatch"), "web": stack.pid("web")}, peaks, stop_sampling
            )
        )
        lags: list[float] = []
        lag_probe = asyncio.create_task(_loop_lag(lags, stop_sampling))
        busy = machine_cpu_seconds()
        window = CpuWindow(pids)
        load_started = time.monotonic()
        changes = await driver.run(args.changes, args.rate)
        cpu = _cpu(window, busy)
        stop_sampling.set()
        await sampler
        await lag_probe
        await asyncio.sleep(2.0)  # late deliveries still count as late
        stats = sockets.reset_counters()
        out["load"] = {
            "cpu": cpu,
            "hostwatch_mem": _mem(stack.pid("hostwatch")),
            "hostwatch_rss_peak_mib": round(peaks.get("hostwatch", 0.0), 1),
            "web_rss_peak_mib": round(peaks.get("web", 0.0), 1),
            "socket_messages": dict(stats.messages),
            "socket_disconnects": stats.disconnects,
            "unmatched_domain_events": stats.unmatched_domain_events,
            "bench_loop_lag": summary_ms(lags),
            **change_report(changes, sockets.count),
        }
        out["load"]["db_state_mismatches"] = await asyncio.to_thread(_db_mismatches, changes)
        out["load"]["per_change"] = change_records(changes, load_started)
    finally:
        for tap in taps:
            await tap.close()
        await sockets.close()
    return out


def _db_mismatches(changes: list[Change]) -> int:
    """Domains whose row does not hold the state of their last successful change."""
    from domains.models import Domain

    expected = {c.uuid: c.expect for c in changes if c.error is None}
    rows = Domain.objects.filter(uuid__in=list(expected)).values_list("uuid", "state")
    return sum(1 for uuid, state in rows if expected[str(uuid)] != state)


def run_fleet(
    args: argparse.Namespace, workdir: Path, stack: ConsoleStack, agents: list[TestAgent]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    started = time.monotonic()
    stack.prepare()
    stack.start()
    out["database"] = stack.database
    out["stack_start_s"] = round(time.monotonic() - started, 2)
    log(f"console on {stack.url} ({stack.database}), data in {stack.data_dir}")
    log(f"pids: web {stack.pid('web')}, hostwatch {stack.pid('hostwatch')}, redis {stack.redis_pid}")

    started = time.monotonic()
    agents.extend(start_test_agents(args.agents, args.domains, workdir / "agents"))
    out["agents_start_s"] = round(time.monotonic() - started, 2)
    out["agent_start_each"] = summary_ms([a.started_in_s for a in agents])
    log(f"{len(agents)} agents x {args.domains} domains up in {out['agents_start_s']} s")

    user = create_viewer()
    keys = login_sessions(user, args.sockets)

    busy = machine_cpu_seconds()
    window = CpuWindow(_pids(stack, agents))
    started = time.monotonic()
    ids = register_hosts([(a.name, a.url, a.secret) for a in agents])
    out["register_s"] = round(time.monotonic() - started, 2)
    total = args.agents * args.domains
    wait_synced(stack, args.agents, total, timeout=120 + total / 20)
    out["sync_s"] = round(time.monotonic() - started, 2)
    out["sync_cpu"] = _cpu(window, busy)
    out["domain_rows"] = total
    log(f"synced: {args.agents} hosts online, {total} domain rows in {out['sync_s']} s")

    out.update(asyncio.run(measure(args, stack, agents, keys, next(iter(ids.values())))))
    out["hostwatch_log"] = _hostwatch_log_counts(stack)
    stack.check_alive()
    return out


# -- report ----------------------------------------------------------------------------------


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "PASS" if value <= target else "FAIL"


def render(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []

    def row(metric: str, value: Any, target: str = "", verdict: str = "") -> None:
        rows.append((metric, "-" if value is None else str(value), target, verdict))

    machine = results["machine"]
    row(
        "machine",
        f"{machine['cpus']} CPUs, busy {machine.get('background_busy_pct_core')}% of a core before start",
    )
    fleet = results.get("fleet")
    if fleet:
        p = results["params"]
        row(
            "fleet",
            f"{p['agents']} agents x {p['domains']} domains, {p['sockets']} sockets, {fleet['database']}",
        )
        row("agents up (all) s", fleet["agents_start_s"])
        row(
            "agent start each p50/max ms",
            f"{fleet['agent_start_each']['p50_ms']} / {fleet['agent_start_each']['max_ms']}",
        )
        row("register hosts s", fleet["register_s"])
        row("sync: all online + rows s", fleet["sync_s"])
        row("sync: hostwatch CPU s", fleet["sync_cpu"]["hostwatch"]["cpu_s"])
        idle, load = fleet["idle"], fleet["load"]
        for phase, data in (("idle", idle), ("load", load)):
            cpu = data["cpu"]
            hw = cpu["hostwatch"]
            row(
                f"{phase}: hostwatch CPU s (% core)",
                f"{hw['cpu_s']} ({hw['pct_core']}%) over {hw['wall_s']:.0f} s",
            )
            row(f"{phase}: web CPU % core", cpu["web"]["pct_core"])
            if "redis" in cpu:
                row(f"{phase}: redis CPU % core", cpu["redis"]["pct_core"])
            row(f"{phase}: agents CPU % core (sum)", cpu["agents"]["pct_core"])
            row(f"{phase}: bench CPU % core", cpu["bench"]["pct_core"])
            row(f"{phase}: machine busy % core (of {results['machine']['cpus']})", cpu["machine"]["pct_core"])
            mem = data["hostwatch_mem"] or {}
            row(f"{phase}: hostwatch RSS MiB", mem.get("rss_mib"))
        row("load: hostwatch RSS peak MiB", load["hostwatch_rss_peak_mib"])
        am = idle["agents_mem"]
        row("agent idle RSS median MiB", am["rss_median_mib"])
        row(
            "agent idle RSS max MiB",
            am["rss_max_mib"],
            f"< {TARGETS['agent_idle_rss_mib']:.0f}",
            _verdict(am["rss_max_mib"], TARGETS["agent_idle_rss_mib"]),
        )
        row("agent idle anon / PSS median MiB", f"{am['anon_median_mib']} / {am['pss_median_mib']}")
        row("changes made (call errors)", f"{load['changes']} ({load['agent_call_errors']})")
        lat = load["latency_all_sockets"]
        row("event latency, all sockets p50 ms", lat["p50_ms"])
        row(
            "event latency, all sockets p99 ms",
            lat["p99_ms"],
            f"< {TARGETS['latency_p99_ms']:.0f}",
            _verdict(lat["p99_ms"], TARGETS["latency_p99_ms"]),
        )
        row("event latency, all sockets max ms", lat["max_ms"])
        first = load["latency_first_socket"]
        row("event latency, first socket p50/p99 ms", f"{first['p50_ms']} / {first['p99_ms']}")
        row("agent call p50/p99 ms", f"{load['agent_call']['p50_ms']} / {load['agent_call']['p99_ms']}")
        for key, label in (
            ("stage_call_to_agent_event", "stage: call -> agent event"),
            ("stage_agent_event_to_published", "stage: agent event -> published (hostwatch)"),
            ("stage_published_to_first_socket", "stage: published -> first socket (web)"),
            ("stage_first_to_last_socket", "stage: first -> last socket (fan-out)"),
        ):
            if load[key]["count"]:
                row(
                    f"{label} p50/p99/max ms",
                    f"{load[key]['p50_ms']} / {load[key]['p99_ms']} / {load[key]['max_ms']}",
                )
        row(
            f"deliveries lost (> {results['params']['deadline']:g} s)",
            f"{load['lost_deliveries']} of {load['expected_deliveries']}",
            "0",
            "PASS" if load["lost_deliveries"] == 0 and load["expected_deliveries"] else "FAIL",
        )
        row("  of which late / never", f"{load['late_deliveries']} / {load['never_delivered']}")
        row("DB rows with a wrong state", load["db_state_mismatches"])
        lag = load["bench_loop_lag"]
        row("bench's own loop lag p99/max ms", f"{lag['p99_ms']} / {lag['max_ms']}")
        row("hostwatch 'offline' warnings", fleet["hostwatch_log"]["offline_warnings"])
    inv = results.get("inventory")
    if inv:
        n = inv["domains"]
        ip, http = inv["in_process"], inv["http_get_domains"]
        target = f"< {TARGETS['inventory_1000_ms']:.0f}"
        row(
            f"inventory {n}: DomainService.list() p50 ms",
            ip["list"]["p50_ms"],
            target,
            _verdict(ip["list"]["p50_ms"], TARGETS["inventory_1000_ms"]),
        )
        row(
            f"inventory {n}: DomainService.list() p99 ms",
            ip["list"]["p99_ms"],
            target,
            _verdict(ip["list"]["p99_ms"], TARGETS["inventory_1000_ms"]),
        )
        row(f"inventory {n}: list() cold (XML parse) ms", ip["list_cold_ms"])
        row(f"inventory {n}: getAllDomainStats p50 ms", ip["getAllDomainStats"]["p50_ms"])
        row(f"inventory {n}: JSON response p50 ms", ip["json_response"]["p50_ms"])
        row(
            f"inventory {n}: GET /v1/domains p50 ms",
            http["p50_ms"],
            target,
            _verdict(http["p50_ms"], TARGETS["inventory_1000_ms"]),
        )
        row(
            f"inventory {n}: GET /v1/domains p99 ms",
            http["p99_ms"],
            target,
            _verdict(http["p99_ms"], TARGETS["inventory_1000_ms"]),
        )
        row(f"inventory {n}: GET /v1/domains cold ms", http["cold_ms"])
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0, 0, 0, 0]
    header = ("metric", "value", "target", "")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = begin("hostwatch", args.workdir, args.output)
    workdir = session.workdir
    keys = ("agents", "domains", "sockets", "changes", "rate", "idle", "deadline", "web_app")
    results = header(session, {k: getattr(args, k) for k in keys}, TARGETS, quiet_s=3)
    log(f"machine busy before start: {results['machine']['background_busy_pct_core']}% of a core")
    stack = ConsoleStack(workdir / "console", web_app=args.web_app)
    agents: list[TestAgent] = []
    try:
        if not args.skip_fleet:
            try:
                results["fleet"] = run_fleet(args, workdir, stack, agents)
            finally:
                log("stopping the fleet and the console")
                stop_test_agents(agents)
                stack.stop()
        if not args.skip_inventory:
            busy_pct = wait_quiet()
            log(f"inventory: one agent with {args.inventory_domains} domains (machine busy {busy_pct}%)")
            results["inventory"] = inventory_bench(
                workdir / "inventory", domains=args.inventory_domains, calls=args.inventory_calls
            )
            results["inventory"]["machine_busy_pct_core_before"] = busy_pct
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    return finish(session, results, render)


if __name__ == "__main__":
    sys.exit(main())
