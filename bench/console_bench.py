"""The graphical console's byte path, Domus against websockify 0.13 (see bench/README.md).

    .venv/bin/python bench/console_bench.py             # 7 x 256 MiB, 2,000 echoes, 50 x 64 MiB, 100 idle
    .venv/bin/python bench/console_bench.py --quick     # 3 x 64 MiB, 500 echoes, 50 x 8 MiB, 50 idle

One TCP source (tests/agent/fake_vnc.py's FakeVncServer, in its own process) and one WebSocket
client (aiohttp and VncOverWebSocket, in this process), and two ways between them:

    Domus       client -> console (uvicorn, domains/consumers.py) -> agent (agent/websockets.py) -> source
    websockify  client -> websockify 0.13 (one forked process per connection)                 -> source

Measures, for both, side by side: bulk throughput (server to client), keystroke echo round trips,
50 consoles streaming at once (aggregate and fairness) and what each open idle console costs in
memory (with --serial-guests N, serial consoles' too, on real guests: bench/console_serial.py); the
CPU of every process meanwhile says what limited the numbers. Prints a table and
writes bench/results/console-<timestamp>.json. Everything it starts is stopped on exit, on an
error and on Ctrl-C.

This module is the command line, the run and the report; bench/console_paths.py starts the
processes and opens the consoles, bench/console_measurements.py measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.console_measurements import (
    STARVED_AFTER_MEDIAN_TIMES,
    PathUnderTest,
    Processes,
    children_of,
    measure,
    measure_memory,
)
from bench.console_paths import (
    BenchAgent,
    BenchError,
    Children,
    DomusPath,
    WebsockifyPath,
    domus_setup,
    installed_version,
    start_agent,
    start_fake_vnc,
    start_websockify,
)
from bench.console_serial import (
    boot_guests,
    guest_files,
    remove_guests_now,
    serial_domains,
    start_libvirt_agent,
)
from bench.console_stack import ConsoleStack, StackError
from bench.output import log, table
from bench.session import begin, finish, header, sized
from console.launcher import WEB_SOCKET_ARGS

TARGETS = {
    "throughput": "Domus >= websockify (bulk, one console)",
    "echo_p99_ms_over_websockify": 1.0,
    "starved_consoles": 0,
    "console_kib_per_idle_console": 100.0,
}
FULL: dict[str, int] = {
    "bulk_mib": 256,
    "bulk_runs": 7,
    "echoes": 2000,
    "echo_warmup": 200,
    "streams": 50,
    "stream_mib": 64,
    "idle": 100,
}
QUICK: dict[str, int] = {
    "bulk_mib": 64,
    "bulk_runs": 3,
    "echoes": 500,
    "echo_warmup": 50,
    "streams": 50,
    "stream_mib": 8,
    "idle": 50,
}


# -- report ------------------------------------------------------------------------------------


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    m = results["measured"]
    d_bulk, w_bulk = m["bulk"]["Domus"]["median_mb_s"], m["bulk"]["websockify"]["median_mb_s"]
    d_p99, w_p99 = m["echo"]["Domus"]["p99_ms"], m["echo"]["websockify"]["p99_ms"]
    starved = m["streams"]["Domus"]["starved"]
    margin = TARGETS["echo_p99_ms_over_websockify"]
    return [
        {
            "what": "bulk throughput, one console: Domus >= websockify (MB/s)",
            "value": f"{d_bulk} vs {w_bulk}",
            "verdict": "PASS" if d_bulk >= w_bulk else "FAIL",
        },
        {
            "what": f"echo p99: Domus <= websockify + {margin} ms",
            "value": f"{d_p99} vs {w_p99}",
            "verdict": "PASS" if d_p99 <= w_p99 + margin else "FAIL",
        },
        {
            "what": f"{m['streams']['Domus']['consoles']} concurrent Domus consoles: none starved",
            "value": f"{starved} starved",
            "verdict": "PASS" if starved == TARGETS["starved_consoles"] else "FAIL",
        },
        _memory_check("graphical", m["memory"]["Domus"]),
        *([_memory_check("serial", m["memory_serial"])] if "memory_serial" in m else []),
    ]


def _memory_check(kind: str, memory: dict[str, Any]) -> dict[str, Any]:
    first = memory["console"]["per_console_kib"].get("VmRSS")
    per_console = memory["console"]["next_per_console_kib"].get("VmRSS")
    count = memory["consoles"]
    return {
        "what": f"console process memory per open idle {kind} console < 100 KiB (VmRSS growth,"
        f" {count} more with {count} open)",
        "value": f"{per_console} KiB (the first {count}: {first} KiB)",
        "verdict": "PASS"
        if per_console is not None and per_console < TARGETS["console_kib_per_idle_console"]
        else "FAIL",
    }


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _rows(m: dict[str, Any], p: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The side-by-side table: (what, Domus, websockify)."""
    names = ("Domus", "websockify")
    rows: list[tuple[str, str, str]] = [("measure", *names)]

    def row(label: str, section: str, value: Callable[[dict[str, Any]], Any]) -> None:
        if section in m:
            domus, wsfy = (str(value(m[section][n])) for n in names)
            rows.append((label, domus, wsfy))

    def spread(v: Mapping[str, float], keys: Sequence[str]) -> str:
        return " / ".join(str(v[k]) for k in keys)

    row(f"bulk, 1 console, MB/s (median of {p['bulk_runs']} x {p['bulk_mib']} MiB)", "bulk", _median)
    row("  runs, MB/s", "bulk", lambda b: ", ".join(str(r) for r in b["runs_mb_s"]))
    row("  frames to the client, mean KiB", "bulk", lambda b: f"{b['frames']}, {b['mean_frame_kib']}")
    row("  proxy CPU s per GB", "bulk", lambda b: b["proxy_cpu_s_per_gb"])
    row("  whole path CPU s per GB (+ client, source)", "bulk", lambda b: b.get("path_cpu_s_per_gb"))
    row("bulk, client offers permessage-deflate, MB/s", "bulk_deflate", _median)
    row("  proxy CPU s per GB", "bulk_deflate", lambda b: b["proxy_cpu_s_per_gb"])
    row(f"echo round trip p50 ms ({p['echoes']})", "echo", lambda e: e["p50_ms"])
    row("echo round trip p99 / max ms", "echo", lambda e: f"{e['p99_ms']} / {e['max_ms']}")
    row(
        f"{p['streams']} consoles x {p['stream_mib']} MiB: aggregate MB/s",
        "streams",
        lambda s: s["aggregate_mb_s"],
    )
    row(
        "  per console MB/s min / median / max",
        "streams",
        lambda s: spread(s["per_console_mb_s"], ("min", "median", "max")),
    )
    row(
        "  finish s first / median / last",
        "streams",
        lambda s: spread(s["finish_s"], ("first", "median", "last")),
    )
    row("  Jain fairness (1: all alike)", "streams", lambda s: s["jain_fairness"])
    row(
        "  first byte max ms / longest gap ms",
        "streams",
        lambda s: f"{s['first_byte_ms_max']} / {s['max_gap_ms']}",
    )
    row(f"  starved (finished > {STARVED_AFTER_MEDIAN_TIMES:g} x median)", "streams", lambda s: s["starved"])
    row("  proxy CPU s per GB", "streams", lambda s: s["proxy_cpu_s_per_gb"])
    mem = m["memory"]
    dc, da = (mem["Domus"][k]["per_console_kib"] for k in ("console", "agent"))
    wc, wm = (mem["websockify"][k]["per_console_kib"] for k in ("connections", "websockify"))
    rows += [
        (f"memory per open idle console, KiB (the first {mem['Domus']['consoles']} open)", "", ""),
        ("  console (uvicorn) VmRSS / RssAnon", f"{_kib(dc.get('VmRSS'))} / {_kib(dc.get('RssAnon'))}", "-"),
        (
            f"  console (uvicorn) VmRSS, {mem['Domus']['consoles']} more",
            _kib(mem["Domus"]["console"]["next_per_console_kib"].get("VmRSS")),
            "-",
        ),
        (
            f"  websockify's connection processes PSS, {mem['Domus']['consoles']} more",
            "-",
            _kib(mem["websockify"]["connections"]["next_per_console_kib"].get("Pss")),
        ),
        ("  agent VmRSS / RssAnon", f"{_kib(da.get('VmRSS'))} / {_kib(da.get('RssAnon'))}", "-"),
        (
            "  websockify's connection processes PSS / USS",
            "-",
            f"{_kib(wc.get('Pss'))} / {_kib(wc.get('USS'))}",
        ),
        ("  websockify's main process VmRSS", "-", _kib(wm.get("VmRSS"))),
        *_serial_rows(m),
        (
            "  all processes (Domus: RSS growth; websockify: PSS)",
            _kib(dc.get("VmRSS", 0) + da.get("VmRSS", 0)),
            _kib(wc.get("Pss", 0) + wm.get("Pss", 0)),
        ),
    ]
    return rows


_QUIET = ("hostwatch", "redis", "websockify main")  # not on the byte path: left out of the CPU lines


def _serial_rows(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    if "memory_serial" not in m:
        return []
    serial = m["memory_serial"]
    sc, sa = (serial[k]["per_console_kib"] for k in ("console", "agent"))
    return [
        (
            f"  serial, {serial['guests']} real guests: console VmRSS / RssAnon (first {serial['consoles']})",
            f"{_kib(sc.get('VmRSS'))} / {_kib(sc.get('RssAnon'))}",
            "-",
        ),
        (
            f"  serial: console VmRSS, {serial['consoles']} more",
            _kib(serial["console"]["next_per_console_kib"].get("VmRSS")),
            "-",
        ),
        ("  serial: agent VmRSS / RssAnon", f"{_kib(sa.get('VmRSS'))} / {_kib(sa.get('RssAnon'))}", "-"),
    ]


def _median(bulk: dict[str, Any]) -> Any:
    return bulk["median_mb_s"]


def render(results: dict[str, Any]) -> str:
    m, p, machine = results["measured"], results["params"], results["machine"]
    lines = [
        f"{machine['cpus']} CPUs, busy {machine['background_busy_pct_core']}% of a core before start; "
        f"{results['database']}; websockify {results['websockify_version']}; bulk payload {p['payload']}"
        + (
            "; agent over pinned TLS (as a remote host)"
            if p.get("agent_tls")
            else "; agent over loopback HTTP"
        )
        + f"; uvicorn {' '.join(WEB_SOCKET_ARGS)} (as make run)",
        "",
        *table(_rows(m, p)),
        "",
        f"raw TCP from the source, no WebSocket (the source's ceiling): {m['raw_tcp']['median_mb_s']} MB/s",
        "",
        f"CPU, % of one core (machine: of {machine['cpus'] * 100}%), and what limited the number:",
    ]
    for label, section in (("bulk", "bulk"), ("bulk, deflate", "bulk_deflate"), ("streams", "streams")):
        for name, cpu in ((n, m[section][n]["cpu"]) for n in ("Domus", "websockify") if section in m):
            per = ", ".join(f"{k} {v}" for k, v in cpu["pct_core"].items() if k not in _QUIET)
            stolen = f" (stolen by the hypervisor: {cpu['stolen_pct']})" if cpu.get("stolen_pct") else ""
            lines.append(f"  {label}, {name}: {per}; machine {cpu['machine_pct']}{stolen}")
            if waited := cpu.get("waited_pct_wall"):
                lines.append(
                    "      runnable, waiting for a CPU (% of the time): "
                    + ", ".join(f"{k} {v}" for k, v in waited.items() if k not in _QUIET)
                )
            if slices := m[section][name].get("slices_per_mb"):
                lines.append(
                    "      put on a CPU, times per MB: "
                    + ", ".join(f"{k} {v}" for k, v in slices.items() if k not in _QUIET)
                )
            lines.append(f"      -> {cpu['limited_by']}")
    console = m["memory"]["Domus"]["console"]
    after = console["after_close_kib"].get("VmRSS", 0) - console["before_kib"].get("VmRSS", 0)
    lines += [
        "",
        f"console (uvicorn) VmRSS once the {2 * m['memory']['Domus']['consoles']} consoles had closed:"
        f" {after:+,} KiB against before they opened",
        "",
        "targets:",
        *(f"  {c['verdict']:4s}  {c['what']}: {c['value']}" for c in results["checks"]),
    ]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute")
    for key, what in (
        ("bulk_mib", "MiB per bulk run"),
        ("bulk_runs", "bulk runs per path"),
        ("echoes", "timed keystroke round trips per path"),
        ("echo_warmup", "untimed round trips first"),
        ("streams", "consoles streaming at once"),
        ("stream_mib", "MiB each streaming console reads"),
        ("idle", "idle consoles for the memory measurement"),
    ):
        flag = "--" + key.replace("_", "-")
        parser.add_argument(
            flag, type=int, dest=key, help=f"{what} (default {FULL[key]}, --quick {QUICK[key]})"
        )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading memory")
    parser.add_argument(
        "--payload",
        choices=("a5", "random"),
        default="a5",
        help="bulk bytes: the fake server's own (one byte repeated) or incompressible",
    )
    parser.add_argument(
        "--deflate", action="store_true", help="also bulk with the client offering permessage-deflate"
    )
    parser.add_argument(
        "--agent-tls",
        action="store_true",
        help="the agent serves TLS and is enrolled with a pairing code, as a remote host's is",
    )
    parser.add_argument(
        "--serial-guests",
        type=int,
        default=0,
        metavar="N",
        help="also measure serial consoles' memory: --idle view consoles spread over N real test"
        " guests on qemu:///system (needs libvirtd and the test guest: make test)",
    )
    parser.add_argument("--workdir", type=Path, help="data directory (default /tmp/domus-bench-<timestamp>)")
    parser.add_argument(
        "--output", type=Path, help="JSON file (default bench/results/console-<timestamp>.json)"
    )
    return sized(parser.parse_args(argv), QUICK, FULL)


def run(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    stack = ConsoleStack(workdir / "console", log_level="WARNING")
    children = Children(workdir)
    serial_agent: BenchAgent | None = None
    # Before the rest of the run: a missing libvirtd or test guest is said at once.
    serial_files = guest_files() if args.serial_guests else None
    try:
        stack.prepare()
        source_port = start_fake_vnc(children, args.payload)
        wsfy_port = start_websockify(children, source_port)
        # One domain per console (see start_agent), and a few for the warm-ups.
        agent = start_agent(children, source_port, max(args.streams, 2 * args.idle) + 5, tls=args.agent_tls)
        stack.start()
        results["database"] = stack.database
        log(
            f"console on {stack.url}, agent on {agent.url}, websockify on :{wsfy_port},"
            f" source on :{source_port}"
        )
        token, domain_ids = domus_setup(stack, agent, children)
        me = [os.getpid()]
        web, agent_pid, source = stack.pid("web"), children.pid("agent"), children.pid("fakevnc")
        wsfy_pid = children.pid("websockify")
        domus = PathUnderTest(
            DomusPath(stack.url, token, domain_ids),
            Processes(
                {
                    "client": lambda: me,
                    "console": lambda: [web],
                    "agent": lambda: [agent_pid],
                    "source": lambda: [source],
                    "hostwatch": lambda: [stack.pid("hostwatch")],
                    "redis": lambda: [] if stack.redis_pid is None else [stack.redis_pid],
                }
            ),
            ("console", "agent"),
            {"console": lambda: [web], "agent": lambda: [agent_pid]},
        )
        wsfy = PathUnderTest(
            WebsockifyPath(wsfy_port),
            Processes(
                {
                    "client": lambda: me,
                    "websockify": lambda: children_of(wsfy_pid),  # a process per connection
                    "websockify main": lambda: [wsfy_pid],
                    "source": lambda: [source],
                }
            ),
            ("websockify", "websockify main"),
            {"websockify": lambda: [wsfy_pid], "connections": lambda: children_of(wsfy_pid)},
        )
        results["measured"] = asyncio.run(measure(args, domus, wsfy, source_port))
        stack.check_alive()
        children.check_alive()
        if serial_files is not None:
            serial_agent = start_libvirt_agent(children)
            results["measured"]["memory_serial"] = measure_serial(
                args, stack, serial_agent, serial_files, token, children
            )
    finally:
        log("stopping everything started")
        if serial_agent is not None:
            remove_guests_now(serial_agent)
        children.stop()
        stack.stop()


def measure_serial(
    args: argparse.Namespace,
    stack: ConsoleStack,
    agent: BenchAgent,
    files: dict[str, str],
    token: str,
    children: Children,
) -> dict[str, Any]:
    """Memory per open idle serial console (view mode), spread over real guests."""
    import aiohttp

    asyncio.run(boot_guests(agent, args.serial_guests, files))
    ids = serial_domains(agent, children)
    stack.restart_web()  # as fresh as the graphical consoles' was: its heap has grown since
    web, agent_pid = stack.pid("web"), children.pid("serial-agent")
    put = PathUnderTest(
        DomusPath(stack.url, token, ids, kind="serial", mode="view"),
        Processes({"console": lambda: [web], "agent": lambda: [agent_pid]}),
        ("console", "agent"),
        {"console": lambda: [web], "agent": lambda: [agent_pid]},
    )

    async def measure_them() -> dict[str, Any]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await measure_memory(put, session, args.idle, args.settle)

    log(f"serial: memory, {args.idle} idle view consoles over {len(ids)} guests, then as many more")
    out = asyncio.run(measure_them())
    out["guests"] = len(ids)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = begin("console", args.workdir, args.output)
    params = {key: getattr(args, key) for key in FULL}
    params.update({"settle_s": args.settle, "payload": args.payload, "deflate": args.deflate})
    params["agent_tls"] = args.agent_tls
    params["serial_guests"] = args.serial_guests
    results = header(session, params, TARGETS, quiet_s=2)
    results["websockify_version"] = installed_version("websockify")
    try:
        run(args, session.workdir, results)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    except (BenchError, StackError) as err:
        log(f"failed: {err}")
        return 1
    results["checks"] = checks(results)
    return finish(session, results, render)


if __name__ == "__main__":
    sys.exit(main())
