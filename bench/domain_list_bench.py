"""The domain list, page and API, at 1,000 and 10,000 domains (see bench/README.md).

    .venv/bin/python bench/domain_list_bench.py              # 20 hosts x 50, then + 90 x 100: 1,000, 10,000
    .venv/bin/python bench/domain_list_bench.py --quick      # 4 x 25, then + 18 x 50: 100, 1,000

Starts a console stack (uvicorn serving this module's `application`: the console's own ASGI app
with one extra outermost middleware that reports each request's database queries and time in
response headers; hostwatch; embedded SQLite and Redis unless DATABASE_URL / REDIS_URL), then
grows a fleet of test-driver agents batch by batch. After each batch hostwatch has recorded
every domain; the benchmark then requests the overview page and the API list, in several shapes
(first page, sorted, deep offset, filtered, searched, as a team member), many times each, one at
a time over a kept-alive connection, and counts the agents' HTTP requests meanwhile (the lists
must not ask any host). Then it changes domains behind Domus's back, on the agents, and checks
what the first list requests say: live (hostwatch running) and across a hostwatch restart.
Prints a table and writes bench/results/domain-list-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.domain_list_behind import behind_the_back_live, behind_the_back_restart
from bench.output import log, table
from bench.procstats import ms
from bench.session import begin, finish, header

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

    from bench.console_stack import ConsoleStack
    from tests.fleet.testdriver import TestAgent

TARGETS = {
    "page_p95_ms_at_1000": 100.0,  # the overview page, first page, at 1,000 domains
    "api_p95_ms_at_10000": 100.0,  # the API list, first page, at 10,000 domains
    "hypervisor_calls_per_request": 0,
}
FULL: dict[str, Any] = {"fleet": "20x50,90x100", "requests": 200}
QUICK: dict[str, Any] = {"fleet": "4x25,18x50", "requests": 40}
QUERIES_HEADER = "X-Bench-Queries"
APP_MS_HEADER = "X-Bench-App-Ms"
OUTGOING_HEADER = "X-Bench-Outgoing"
AGENT_REQUEST = re.compile(rb" (GET|POST|PUT|PATCH|DELETE) /v1/\S* \d{3} [\d.]+ms")


# -- inside the web process ----------------------------------------------------------------------
# uvicorn serves `bench.domain_list_bench:application`: console.asgi's application, with
# QueryCountMiddleware first in MIDDLEWARE and outgoing TCP connections counted. Built on first
# access (PEP 562), so that importing this module for the benchmark itself sets nothing up.

_outgoing = 0
_outgoing_lock = threading.Lock()


class QueryCountMiddleware:
    """Outermost: every query and all of Django's time for the request, sessions and auth too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from django.db import connection

        count = [0]

        def counted(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
            count[0] += 1
            return execute(sql, params, many, context)

        started = time.perf_counter()
        with connection.execute_wrapper(counted):
            response = self.get_response(request)
        response[APP_MS_HEADER] = f"{(time.perf_counter() - started) * 1000:.3f}"
        response[QUERIES_HEADER] = str(count[0])
        response[OUTGOING_HEADER] = str(_outgoing)
        return response


def _count_outgoing_connections() -> None:
    """Count the web process' TCP connects (agents are reached over TCP; PostgreSQL through
    libpq and an embedded Redis through a unix socket do not pass here; a TCP Redis is left out)."""
    redis_url = os.environ.get("REDIS_URL", "")
    skip = set()
    if redis_url.startswith("redis://"):
        skip.add(int(redis_url.split("://", 1)[1].split("/", 1)[0].rpartition(":")[2] or 6379))
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def note(sock: socket.socket, address: Any) -> None:
        global _outgoing
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[1] not in skip:
            with _outgoing_lock:
                _outgoing += 1

    def connect(self: socket.socket, address: Any) -> None:
        note(self, address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        note(self, address)
        return original_connect_ex(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]


def _web_application() -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    from django.conf import settings

    settings.MIDDLEWARE = [f"{__name__}.QueryCountMiddleware", *settings.MIDDLEWARE]
    _count_outgoing_connections()
    from console.asgi import application

    return application


def __getattr__(name: str) -> Any:
    if name == "application":
        app = _web_application()
        globals()["application"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the benchmark -------------------------------------------------------------------------------


def parse_fleet(text: str) -> list[tuple[int, int]]:
    """ "20x50,90x100" -> [(20, 50), (90, 100)]: batches of (hosts, domains each), cumulative."""
    batches = []
    for part in text.split(","):
        hosts, _, domains = part.strip().partition("x")
        if not hosts.isdigit() or not domains.isdigit() or int(hosts) < 1:
            raise argparse.ArgumentTypeError(f"expected HOSTSxDOMAINS[,HOSTSxDOMAINS...], not {text!r}")
        batches.append((int(hosts), int(domains)))
    return batches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"--fleet {QUICK['fleet']} --requests 40")
    parser.add_argument(
        "--fleet",
        type=parse_fleet,
        help=f"batches of HOSTSxDOMAINS, measured after each (default {FULL['fleet']})",
    )
    parser.add_argument("--requests", type=int, help=f"timed requests per shape (default {FULL['requests']})")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per shape first")
    parser.add_argument("--skip-restart", action="store_true", help="no hostwatch restart check at the end")
    parser.add_argument("--workdir", type=Path, help="data directory (default /tmp/domus-bench-<timestamp>)")
    parser.add_argument(
        "--output", type=Path, help="JSON file (default bench/results/domain-list-<timestamp>.json)"
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    if args.fleet is None:
        args.fleet = parse_fleet(str(defaults["fleet"]))
    if args.requests is None:
        args.requests = int(defaults["requests"])
    return args


@dataclass
class Sample:
    status: int
    seconds: float
    app_ms: float
    queries: int
    outgoing: int
    body: bytes


class Browser:
    """One signed-in client on a kept-alive HTTP connection, one request at a time."""

    def __init__(self, port: int, session_key: str) -> None:
        self.port = port
        self.headers = {"Cookie": f"sessionid={session_key}", "Accept": "text/html,application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> Sample:
        for attempt in (1, 2):
            try:
                started = time.perf_counter()
                self.conn.request("GET", path, headers=self.headers)
                resp = self.conn.getresponse()
                body = resp.read()
                seconds = time.perf_counter() - started
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()  # the server closed a kept-alive connection: once more, anew
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt == 2:
                    raise
        return Sample(
            status=resp.status,
            seconds=seconds,
            app_ms=float(resp.getheader(APP_MS_HEADER) or "nan"),
            queries=int(resp.getheader(QUERIES_HEADER) or "-1"),
            outgoing=int(resp.getheader(OUTGOING_HEADER) or "-1"),
            body=body,
        )

    def json(self, path: str) -> Any:
        sample = self.get(path)
        if sample.status != 200:
            raise RuntimeError(f"GET {path}: {sample.status} {sample.body[:300]!r}")
        return json.loads(sample.body)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Shape:
    """One kind of request: what is measured, many times."""

    name: str
    kind: str  # page | api
    path: str
    who: str = "viewer"  # viewer (site-wide Viewer role) | member (Viewer of one team)
    expect_rows: int | None = None  # rows the response must hold (checks the shape is real)


def _percentile(values: Sequence[float], pct: float) -> float | None:
    from bench.procstats import percentile

    return percentile(values, pct)


def measure_shape(browser: Browser, shape: Shape, *, requests: int, warmup: int) -> dict[str, Any]:
    for _ in range(warmup):
        browser.get(shape.path)
    samples = [browser.get(shape.path) for _ in range(requests)]
    bad = [s.status for s in samples if s.status != 200]
    if bad:
        raise RuntimeError(f"{shape.name}: GET {shape.path} answered {bad[:5]}: {samples[0].body[:300]!r}")
    rows = _rows(shape, samples[-1].body)
    times = [s.seconds for s in samples]
    app = [s.app_ms / 1000 for s in samples]
    queries = sorted({s.queries for s in samples})
    sizes = sorted({len(s.body) for s in samples})
    return {
        "name": shape.name,
        "kind": shape.kind,
        "who": shape.who,
        "path": shape.path,
        "requests": len(samples),
        "rows": rows,
        "rows_expected": shape.expect_rows,
        "p50_ms": ms(_percentile(times, 50)),
        "p95_ms": ms(_percentile(times, 95)),
        "p99_ms": ms(_percentile(times, 99)),
        "max_ms": ms(max(times)),
        "app_p50_ms": ms(_percentile(app, 50)),
        "app_p95_ms": ms(_percentile(app, 95)),
        "queries": queries[0] if len(queries) == 1 else queries,
        "payload_bytes": sizes[0] if len(sizes) == 1 else [sizes[0], sizes[-1]],
    }


def _rows(shape: Shape, body: bytes) -> int:
    if shape.kind == "api":
        return len(json.loads(body)["results"])
    return body.count(b"data-domain-row=")


# -- the fleet -------------------------------------------------------------------------------


def agent_request_count(agents: Sequence[TestAgent]) -> int:
    """HTTP requests the agents have logged so far (their request log, one line each)."""
    total = 0
    for agent in agents:
        with contextlib.suppress(FileNotFoundError):
            total += len(AGENT_REQUEST.findall(agent.log_path.read_bytes()))
    return total


def grow_fleet(
    stack: ConsoleStack,
    agents: list[TestAgent],
    workdir: Path,
    hosts: int,
    domains_each: int,
    total_domains: int,
) -> dict[str, Any]:
    from bench.console_stack import register_hosts
    from bench.hostwatch_bench import wait_synced
    from tests.fleet.testdriver import start_test_agents

    started = time.monotonic()
    batch = start_test_agents(hosts, domains_each, workdir / "agents", first_index=len(agents))
    agents.extend(batch)
    up_s = time.monotonic() - started
    log(f"+{hosts} agents x {domains_each} domains up in {up_s:.1f} s")
    started = time.monotonic()
    register_hosts([(a.name, a.url, a.secret) for a in batch])
    wait_synced(stack, len(agents), total_domains, timeout=120 + total_domains / 20)
    sync_s = time.monotonic() - started
    log(f"synced: {len(agents)} hosts online, {total_domains} domain rows in {sync_s:.1f} s")
    return {"agents_up_s": round(up_s, 2), "sync_s": round(sync_s, 2)}


def analyze_postgres(stack: ConsoleStack) -> None:
    """Planner statistics, as autovacuum gathers them within a minute of a bulk insert."""
    if stack.database == "postgresql":
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def assign_team(member_team: Any, agents: Sequence[TestAgent]) -> int:
    """Give every other host's domains to the member's team (discovered domains have none)."""
    from domains.models import Domain

    names = [a.name for a in agents[::2]]
    return Domain.objects.filter(host__name__in=names).update(team=member_team)


def shapes_for(total: int, per_page: int, host_id: int, member_rows: int) -> list[Shape]:
    from domains.models import Domain

    def page(**params: Any) -> str:
        return "/" + (f"?{urlencode(params)}" if params else "")

    def api(**params: Any) -> str:
        return "/api/v1/domains/" + (f"?{urlencode(params)}" if params else "")

    pages = -(-total // per_page)
    on_host = Domain.objects.filter(host_id=host_id).count()
    running_on_host = Domain.objects.filter(host_id=host_id, state="running").count()
    searched = Domain.objects.filter(name__icontains="d001").count()
    return [
        Shape("page: first page", "page", page(), expect_rows=min(per_page, total)),
        Shape("page: -state, middle page", "page", page(ordering="-state", page=pages // 2 + 1)),
        Shape("page: host, last page", "page", page(ordering="host", page=pages)),
        Shape(
            "page: host + state filter",
            "page",
            page(host=host_id, state="running"),
            expect_rows=min(per_page, running_on_host),
        ),
        Shape("page: name search", "page", page(q="d001"), expect_rows=min(per_page, searched)),
        Shape(
            "page: first page, team member",
            "page",
            page(),
            who="member",
            expect_rows=min(per_page, member_rows),
        ),
        Shape("api: first 100", "api", api(), expect_rows=min(100, total)),
        Shape("api: live re-read (page's 50)", "api", api(limit=per_page, offset=0)),
        Shape("api: 500, -created_at", "api", api(limit=500, ordering="-created_at")),
        Shape("api: last 100 by memory", "api", api(ordering="memory_mib", offset=max(0, total - 100))),
        Shape("api: host filter", "api", api(host=host_id), expect_rows=min(100, on_host)),
        Shape("api: name search", "api", api(q="d001"), expect_rows=min(100, searched)),
        Shape(
            "api: first 100, team member",
            "api",
            api(),
            who="member",
            expect_rows=min(100, member_rows),
        ),
    ]


def postgres_pids() -> list[int]:
    """The PostgreSQL server's processes on this machine (none when it runs elsewhere)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                    pids.append(int(entry))
    return pids


def database_sessions(stack: ConsoleStack) -> int | None:
    """Connections opened to the console's PostgreSQL database so far (None on SQLite)."""
    if stack.database != "postgresql":
        return None
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        row = cursor.fetchone()
    return int(row[0]) if row else None


def measure_lists(
    stack: ConsoleStack,
    browsers: dict[str, Browser],
    agents: Sequence[TestAgent],
    shapes: Sequence[Shape],
    *,
    requests: int,
    warmup: int,
) -> dict[str, Any]:
    from bench.procstats import CpuWindow, machine_cpu_seconds

    pids = {
        "web": [stack.pid("web")],
        "hostwatch": [stack.pid("hostwatch")],
        "agents": [a.proc.pid for a in agents],
        "postgres": postgres_pids(),
        "bench": [os.getpid()],
    }
    cpu = CpuWindow(pids)
    busy = machine_cpu_seconds()
    sessions = database_sessions(stack)
    before_agent = agent_request_count(agents)
    before_outgoing = browsers["viewer"].get("/api/v1/domains/?limit=1").outgoing
    results = []
    sent = 0
    for shape in shapes:
        result = measure_shape(browsers[shape.who], shape, requests=requests, warmup=warmup)
        sent += requests + warmup
        results.append(result)
        log(
            f"  {shape.name:34s} p50 {result['p50_ms']:7.2f} ms  p95 {result['p95_ms']:7.2f} ms  "
            f"{result['queries']} queries  {result['payload_bytes']} B  {result['rows']} rows"
        )
    after_outgoing = browsers["viewer"].get("/api/v1/domains/?limit=1").outgoing
    agent_requests = agent_request_count(agents) - before_agent
    sessions_after = database_sessions(stack)
    used = {name: use.as_dict() for name, use in cpu.stop().items()}
    wall = used["web"]["wall_s"]
    used["machine"] = {"cpu_s": round(machine_cpu_seconds() - busy, 3), "wall_s": wall}
    used["machine"]["pct_core"] = round(100 * used["machine"]["cpu_s"] / wall, 1) if wall else 0.0
    return {
        "shapes": results,
        "cpu": used,  # while the list requests ran: who else was busy
        # Connections opened meanwhile, by anyone (PostgreSQL only).
        "database_connections_opened": None
        if sessions is None or sessions_after is None
        else sessions_after - sessions,
        "list_requests": sent,
        "agent_http_requests": agent_requests,
        "web_outgoing_connections": after_outgoing - before_outgoing,
        "hypervisor_calls_per_request": round((agent_requests + after_outgoing - before_outgoing) / sent, 4),
    }


# -- report ----------------------------------------------------------------------------------


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "PASS" if value <= target else "FAIL"


def _shape(size_result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in size_result["lists"]["shapes"] if s["name"] == name)


def render(results: dict[str, Any]) -> str:
    lines = []
    machine = results["machine"]
    lines.append(
        f"{results['database']}, {machine['cpus']} CPUs, busy {machine['background_busy_pct_core']}% "
        f"of a core before start; {results['params']['requests']} timed requests per shape, one at a time"
    )
    lines.append("")
    header = (
        "N",
        "hosts",
        "page p50/p95 ms",
        "API p50/p95 ms",
        "queries page/API",
        "bytes page/API",
        "hv calls",
    )
    rows: list[tuple[str, ...]] = [header]
    for size in results["sizes"]:
        page, api = _shape(size, "page: first page"), _shape(size, "api: first 100")
        rows.append(
            (
                str(size["domains"]),
                str(size["hosts"]),
                f"{page['p50_ms']} / {page['p95_ms']}",
                f"{api['p50_ms']} / {api['p95_ms']}",
                f"{page['queries']} / {api['queries']}",
                f"{page['payload_bytes']} / {api['payload_bytes']}",
                f"{size['lists']['agent_http_requests'] + size['lists']['web_outgoing_connections']}"
                f" in {size['lists']['list_requests']}",
            )
        )
    lines += table(rows)
    lines.append("")
    rows = [
        (
            "shape",
            *(f"N={s['domains']} p50/p95 ms" for s in results["sizes"]),
            "queries",
            "bytes (last N)",
            "rows",
        )
    ]
    for shape in results["sizes"][0]["lists"]["shapes"]:
        per = [_shape(s, shape["name"]) for s in results["sizes"]]
        queries = sorted({json.dumps(p["queries"]) for p in per})
        rows.append(
            (
                shape["name"],
                *(f"{p['p50_ms']} / {p['p95_ms']}" for p in per),
                " / ".join(queries) + ("" if len(queries) == 1 else "  (varies with N)"),
                str(per[-1]["payload_bytes"]),
                str(per[-1]["rows"]),
            )
        )
    lines += table(rows)
    lines.append("")
    for size in results["sizes"]:
        cpu = size["lists"]["cpu"]
        busy = ", ".join(f"{name} {use['pct_core']}%" for name, use in cpu.items())
        opened = size["lists"]["database_connections_opened"]
        lines.append(
            f"N={size['domains']}: CPU while the list requests ran (% of one core, of"
            f" {results['machine']['cpus'] * 100}%): {busy}"
            + ("" if opened is None else f"; database connections opened: {opened}")
        )
    lines.append("")
    lines.append("targets:")
    for check in results["checks"]:
        lines.append(f"  {check['verdict']:4s}  {check['what']}: {check['value']}")
    for size in results["sizes"]:
        lines.append("")
        took = size["live_changes"]["agent_calls_ms"]
        lines.append(f"behind Domus's back, live, at N={size['domains']} (agent calls took {took} ms):")
        lines += _changes(size["live_changes"]["domains"])
    restart = results.get("restart")
    if restart:
        lines.append("")
        before = restart["right_while_hostwatch_down"]
        lines.append(
            f"behind Domus's back while hostwatch was down (times from its restart); before: {before}"
        )
        lines += _changes(restart["domains"])
    return "\n".join(lines)


def _changes(domains: dict[str, Any]) -> list[str]:
    out = []
    for name, r in domains.items():
        first = r["first_request"] or {}
        out.append(
            f"  {name} (should be {r['expected']}): first request shows it: {first.get('shows_it')},"
            f" right: {first.get('right')} (at {first.get('at_ms')} ms); {r['expected']} after"
            f" {r['shown_or_gone_after_ms']} ms, right after {r['right_after_ms']} ms;"
            f" page agrees: {r['page_agrees']}; row {r['last_rows']}"
        )
    return out


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    sizes = results["sizes"]
    for size in sizes:
        n = size["domains"]
        page, api = _shape(size, "page: first page"), _shape(size, "api: first 100")
        if n == 1000:
            out.append(
                {
                    "what": "page p95 < 100 ms at 1,000 domains",
                    "value": page["p95_ms"],
                    "verdict": _verdict(page["p95_ms"], TARGETS["page_p95_ms_at_1000"]),
                }
            )
        if n == 10000:
            out.append(
                {
                    "what": "API p95 < 100 ms at 10,000 domains",
                    "value": api["p95_ms"],
                    "verdict": _verdict(api["p95_ms"], TARGETS["api_p95_ms_at_10000"]),
                }
            )
        worst = max(s["p95_ms"] for s in size["lists"]["shapes"])
        out.append(
            {
                "what": f"every shape p95 < 100 ms at {n:,} domains",
                "value": worst,
                "verdict": _verdict(worst, 100.0),
            }
        )
        calls = size["lists"]["agent_http_requests"] + size["lists"]["web_outgoing_connections"]
        out.append(
            {
                "what": f"hypervisor calls during {size['lists']['list_requests']} list requests at {n:,}",
                "value": calls,
                "verdict": "PASS" if calls == 0 else "FAIL",
            }
        )
        short = [
            s["name"]
            for s in size["lists"]["shapes"]
            if s["rows_expected"] is not None and s["rows"] != s["rows_expected"]
        ]
        if short:
            out.append({"what": f"rows as expected at {n:,}", "value": short, "verdict": "FAIL"})
    if len(sizes) > 1:
        varying = [
            shape["name"]
            for shape in sizes[0]["lists"]["shapes"]
            if len({json.dumps(_shape(s, shape["name"])["queries"]) for s in sizes}) > 1
        ]
        out.append(
            {
                "what": "queries per request the same at every N, every shape",
                "value": varying or "yes",
                "verdict": "FAIL" if varying else "PASS",
            }
        )
    changes = [c for s in sizes for c in s["live_changes"]["domains"].values()]
    if results.get("restart"):
        changes += list(results["restart"]["domains"].values())
    wrong = [c for c in changes if c["right_after_ms"] is None or not c["page_agrees"]]
    out.append(
        {
            "what": "lists right after behind-the-back changes (name, vCPUs, memory; page too)",
            "value": f"{len(changes) - len(wrong)} of {len(changes)}",
            "verdict": "FAIL" if wrong else "PASS",
        }
    )
    return out


# -- main ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    from bench.console_stack import ConsoleStack, create_viewer, login_sessions
    from tests.fleet.testdriver import stop_test_agents

    stack = ConsoleStack(workdir / "console", web_app="bench.domain_list_bench:application")
    agents: list[TestAgent] = []
    browsers: dict[str, Browser] = {}
    try:
        stack.prepare()
        stack.start()
        results["database"] = stack.database
        log(f"console on {stack.url} ({stack.database}), data in {stack.data_dir}")
        from console.access.models import Membership, Role, Team
        from domains.views import HOME_PAGE_SIZE

        viewer = create_viewer()
        team = Team.objects.create(name="bench-red")
        member = type(viewer).objects.create_user("bench-member", password=None)
        Membership.objects.create(user=member, team=team, role=Role.objects.get(name="Viewer"))
        browsers = {
            "viewer": Browser(stack.port, login_sessions(viewer, 1)[0]),
            "member": Browser(stack.port, login_sessions(member, 1)[0]),
        }
        total = 0
        for hosts, each in args.fleet:
            total += hosts * each
            size: dict[str, Any] = {"domains": total}
            size.update(grow_fleet(stack, agents, workdir, hosts, each, total))
            size["hosts"] = len(agents)
            member_rows = assign_team(team, agents)
            analyze_postgres(stack)
            from bench.hostwatch_bench import wait_quiet

            size["machine_busy_pct_core_before"] = wait_quiet()
            busy = size["machine_busy_pct_core_before"]
            log(f"measuring N={total} ({len(agents)} hosts; machine busy {busy}%)")
            first_host = _host_id(agents[0].name)
            shapes = shapes_for(total, HOME_PAGE_SIZE, first_host, member_rows)
            size["lists"] = measure_lists(
                stack, browsers, agents, shapes, requests=args.requests, warmup=args.warmup
            )
            size["live_changes"] = behind_the_back_live(browsers["viewer"], agents, total)
            # Keep N as it was for the next batch: the changes above add one domain and remove one.
            stack.check_alive()
            results["sizes"].append(size)
            total = _domain_count()
        if not args.skip_restart and len(agents) >= 4:
            log("hostwatch restart: changes made while it is down")
            results["restart"] = behind_the_back_restart(stack, browsers["viewer"], agents)
        stack.check_alive()
    finally:
        for browser in browsers.values():
            browser.close()
        log("stopping the fleet and the console")
        stop_test_agents(agents)
        stack.stop()


def _host_id(name: str) -> int:
    from hosts.models import Host

    return int(Host.objects.get(name=name).pk)


def _domain_count() -> int:
    from domains.models import Domain

    return int(Domain.objects.count())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = begin("domain-list", args.workdir, args.output)
    params = {"fleet": [f"{h}x{d}" for h, d in args.fleet], "requests": args.requests, "warmup": args.warmup}
    results = header(session, params, TARGETS, quiet_s=3)
    results["sizes"] = []
    workdir = session.workdir
    try:
        run(args, workdir, results)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    results["checks"] = checks(results)
    return finish(session, results, render)


if __name__ == "__main__":
    sys.exit(main())
