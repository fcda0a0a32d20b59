"""The graphical console's byte path, Domus against websockify 0.13 (see bench/README.md).

    .venv/bin/python bench/console_bench.py             # 7 x 256 MiB, 2,000 echoes, 50 x 64 MiB, 100 idle
    .venv/bin/python bench/console_bench.py --quick     # 3 x 64 MiB, 500 echoes, 50 x 8 MiB, 50 idle

One TCP source (tests/agent/fake_vnc.py's FakeVncServer, in its own process) and one WebSocket
client (aiohttp and VncOverWebSocket, in this process), and two ways between them:

    Domus       client -> console (uvicorn, domains/consumers.py) -> agent (agent/websockets.py) -> source
    websockify  client -> websockify 0.13 (one forked process per connection)                 -> source

Measures, for both, side by side: bulk throughput (server to client), keystroke echo round trips,
50 consoles streaming at once (aggregate and fairness) and what each open idle console costs in
memory; the CPU of every process meanwhile says what limited the numbers. Prints a table and
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
)
from bench.console_paths import (
    Children,
    DomusPath,
    WebsockifyPath,
    domus_setup,
    installed_version,
    start_agent,
    start_fake_vnc,
    start_websockify,
)
from bench.output import log, table
from bench.session import begin, finish, header
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
    first = m["memory"]["Domus"]["console"]["per_console_kib"].get("VmRSS")
    per_console = m["memory"]["Domus"]["console"]["next_per_console_kib"].get("VmRSS")
    count = m["memory"]["Domus"]["consoles"]
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
        {
            "what": f"console process memory per open idle console < 100 KiB (VmRSS growth, {count} more"
            f" with {count} open)",
            "value": f"{per_console} KiB (the first {count}: {first} KiB)",
            "verdict": "PASS"
            if per_console is not None and per_console < TARGETS["console_kib_per_idle_console"]
            else "FAIL",
        },
    ]


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
        (
            "  all processes (Domus: RSS growth; websockify: PSS)",
            _kib(dc.get("VmRSS", 0) + da.get("VmRSS", 0)),
            _kib(wc.get("Pss", 0) + wm.get("Pss", 0)),
        ),
    ]
    return rows


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
            per = ", ".join(f"{k} {v}" for k, v in cpu["pct_core"].items() if k not in ("hostwatch", "redis"))
            lines.append(f"  {label}, {name}: {per}; machine {cpu['machine_pct']}")
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
    parser.add_argument("--workdir", type=Path, help="data directory (default /tmp/domus-bench-<timestamp>)")
    parser.add_argument(
        "--output", type=Path, help="JSON file (default bench/results/console-<timestamp>.json)"
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    from bench.console_stack import ConsoleStack

    workdir.mkdir(parents=True, exist_ok=True)
    stack = ConsoleStack(workdir / "console", log_level="WARNING")
    children = Children(workdir)
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
    finally:
        log("stopping everything started")
        children.stop()
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = begin("console", args.workdir, args.output)
    params = {key: getattr(args, key) for key in FULL}
    params.update({"settle_s": args.settle, "payload": args.payload, "deflate": args.deflate})
    params["agent_tls"] = args.agent_tls
    results = header(session, params, TARGETS, quiet_s=2)
    results["websockify_version"] = installed_version("websockify")
    try:
        run(args, session.workdir, results)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    results["checks"] = checks(results)
    return finish(session, results, render)


if __name__ == "__main__":
    sys.exit(main())
