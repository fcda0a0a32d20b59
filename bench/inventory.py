"""How long an agent takes to read its whole inventory (1,000 domains by default).

Over HTTP: `GET /v1/domains` against a real agent process on a test:/// node. In process: the
agent's own `DomainService.list()` on a LibvirtConnection, plus its parts (the bulk
`getAllDomainStats` call, the list built from it, and the JSON the API writes), so a slow total
can be pinned on one of them. That part runs in a fresh Python process (`python -m
bench.inventory`) with the agent's modules loaded, so its heap, and so its garbage-collection
pauses, are an agent's rather than the benchmark's. "cold" is the first call, which parses every
domain's XML (the static-info cache is empty); the rest is the steady state.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.procstats import memory, summary_ms
from tests.fleet.testdriver import running_test_agents

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def _timed_sync(fn: Callable[[], T], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


async def _timed(fn: Callable[[], Awaitable[T]], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return times


async def _over_http(url: str, secret: str, calls: int, domains: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        got: list[int] = []

        async def one() -> None:
            async with session.get(url + "/v1/domains") as resp:
                resp.raise_for_status()
                got.append(len(await resp.json()))

        cold = await _timed(one, 1)
        warm = await _timed(one, calls)
    if set(got) != {domains}:
        raise RuntimeError(f"GET /v1/domains returned {sorted(set(got))} domains, not {domains}")
    return {"cold_ms": round(cold[0] * 1000, 2), **summary_ms(warm)}


async def _in_process(node_path: Path, pool_dir: str, calls: int) -> dict[str, Any]:
    import libvirt
    import libvirtaio

    from agent.api import DOMAIN_LIST
    from agent.connection import LibvirtConnection
    from agent.domains import DomainService

    libvirtaio.virEventRegisterAsyncIOImpl(loop=asyncio.get_running_loop())  # as the agent does
    conn = LibvirtConnection(f"test://{node_path}")
    await conn.open()
    try:
        service = DomainService(conn, domain_type="test", default_pool_dir=pool_dir, local_files=False)
        cold = await _timed(service.list, 1)
        warm = await _timed(service.list, calls)
        raw = conn.get()
        stats = _timed_sync(lambda: raw.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE), calls)
        built = _timed_sync(lambda: service._list_sync(raw), calls)
        listed = await service.list()
        serialised = _timed_sync(lambda: DOMAIN_LIST.dump_json(listed), calls)
    finally:
        await conn.close()
    return {
        "domains": len(listed),
        "list_cold_ms": round(cold[0] * 1000, 2),
        "list": summary_ms(warm),  # DomainService.list(): thread hop + everything below
        "getAllDomainStats": summary_ms(stats),  # the one bulk libvirt call
        "list_sync": summary_ms(built),  # the bulk call + DomainInfo models, no thread hop
        "json_response": summary_ms(serialised),  # what GET /v1/domains adds to write it out
    }


def inventory_bench(workdir: Path, *, domains: int = 1000, calls: int = 50) -> dict[str, Any]:
    """Both measurements, against a fresh agent (and node document) with `domains` domains."""
    with running_test_agents(1, domains, workdir, first_index=999) as (agent,):
        http = asyncio.run(_over_http(agent.url, agent.secret, calls, domains))
        mem = memory(agent.proc.pid)
        node_path, pool_dir = agent.node_path, str(workdir / "pool")
    done = subprocess.run(
        [sys.executable, "-m", "bench.inventory", str(node_path), pool_dir, str(calls)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"in-process inventory measurement failed:\n{done.stderr[-3000:]}")
    in_process = json.loads(done.stdout)
    return {
        "domains": domains,
        "calls": calls,
        "http_get_domains": http,
        "agent_rss_after_mib": None if mem is None else round(mem.rss_mib, 1),
        "in_process": in_process,
    }


def main(argv: list[str]) -> None:
    """`python -m bench.inventory NODE_XML POOL_DIR CALLS`: the in-process part, as JSON."""
    import agent.server  # noqa: F401  (the agent's whole import graph, as in a real agent)

    node_path, pool_dir, calls = Path(argv[0]), argv[1], int(argv[2])
    print(json.dumps(asyncio.run(_in_process(node_path, pool_dir, calls))))


if __name__ == "__main__":
    main(sys.argv[1:])
