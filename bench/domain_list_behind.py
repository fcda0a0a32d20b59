"""Domains changed behind Domus's back (defined and undefined straight on an agent, as someone
with virsh on the host would), and how soon the domain list says so: live, and after hostwatch
restarts. Part of bench/domain_list_bench.py."""

from __future__ import annotations

import http.client
import json
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from bench.procstats import ms

if TYPE_CHECKING:
    from bench.console_stack import ConsoleStack
    from bench.domain_list_bench import Browser
    from tests.fleet.testdriver import TestAgent


def _agent_call(agent: TestAgent, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    try:
        headers = {**agent.headers, "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"agent {agent.name}: {method} {path}: {resp.status} {data[:300]!r}")
        return json.loads(data) if data else None
    finally:
        conn.close()


def define_behind_the_back(agent: TestAgent, name: str, *, vcpus: int, memory_mib: int) -> str:
    """Define a domain straight on the agent, as someone with virsh on the host would."""
    from agent.protocol import DomainSpec

    iso = agent.node_path.parent / "pool" / "bench.iso"
    iso.touch()
    spec = DomainSpec.model_validate(
        {
            "uuid": str(uuid.uuid4()),
            "name": name,
            "vcpus": vcpus,
            "memory_mib": memory_mib,
            "boot": {"iso": str(iso)},
        }
    )
    _agent_call(agent, "POST", "/v1/domains", json.loads(spec.model_dump_json()))
    return str(spec.uuid)


def undefine_behind_the_back(agent: TestAgent, domain_uuid: str) -> None:
    _agent_call(agent, "DELETE", f"/v1/domains/{domain_uuid}?delete_disks=false")


@dataclass
class Expectation:
    """What the first list requests should say about one domain after a change on its host."""

    name: str
    present: bool
    vcpus: int | None = None
    memory_mib: int | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)

    def right(self, rows: list[dict[str, Any]]) -> bool:
        mine = [r for r in rows if r["name"] == self.name]
        if not self.present:
            return not mine
        if len(mine) != 1:
            return False
        row = mine[0]
        return (self.vcpus is None or row["vcpus"] == self.vcpus) and (
            self.memory_mib is None or row["memory_mib"] == self.memory_mib
        )

    def shown(self, rows: list[dict[str, Any]]) -> bool:
        return any(r["name"] == self.name for r in rows)


def follow(
    browser: Browser, expectations: Sequence[Expectation], since: float, timeout: float
) -> dict[str, Any]:
    """Ask the API list about each domain (as a browser's first load would), round after round,
    until every expectation holds or `timeout` seconds after `since` have passed."""
    state: dict[str, dict[str, Any]] = {
        e.name: {"first": None, "changed": None, "right": None, "rows": [], "requests": 0}
        for e in expectations
    }
    while True:
        pending = [e for e in expectations if state[e.name]["right"] is None]
        if not pending or time.monotonic() - since > timeout:
            break
        for exp in pending:
            rows = browser.json("/api/v1/domains/?" + urlencode({"q": exp.name}))["results"]
            now = time.monotonic() - since
            seen = state[exp.name]
            seen["rows"], seen["requests"] = rows, seen["requests"] + 1
            if seen["first"] is None:
                seen["first"] = {
                    "shows_it": exp.shown(rows),
                    "right": exp.right(rows),
                    "at_ms": round(now * 1000, 1),
                }
            if seen["changed"] is None and exp.shown(rows) == exp.present:
                seen["changed"] = now
            if exp.right(rows):
                seen["right"] = now
        time.sleep(0.005)
    out: dict[str, Any] = {}
    for exp in expectations:
        seen = state[exp.name]
        page = browser.get("/?" + urlencode({"q": exp.name})).body.decode(errors="replace")
        out[exp.name] = {
            "expected": "listed" if exp.present else "gone",
            "expected_vcpus": exp.vcpus,
            "expected_memory_mib": exp.memory_mib,
            "first_request": seen["first"],
            "shown_or_gone_after_ms": ms(seen["changed"]),
            "right_after_ms": ms(seen["right"]),
            "requests": seen["requests"],
            "last_rows": [
                {k: r[k] for k in ("name", "state", "vcpus", "memory_mib")}
                for r in seen["rows"]
                if r["name"] == exp.name
            ],
            "page_agrees": (f">{exp.name}</a>" in page) == exp.present,
        }
    return out


def behind_the_back_live(browser: Browser, agents: Sequence[TestAgent], size: int) -> dict[str, Any]:
    """Define one domain and undefine another on agents while hostwatch runs."""
    first, last = agents[0], agents[-1]
    new_name = f"bb-live-{size}"
    started = time.monotonic()
    define_behind_the_back(first, new_name, vcpus=2, memory_mib=128)
    gone = last.domains[0]
    undefine_behind_the_back(last, str(gone.uuid))
    calls_s = time.monotonic() - started
    expectations = [
        Expectation(new_name, present=True, vcpus=2, memory_mib=128),
        Expectation(gone.name, present=False),
    ]
    result = follow(browser, expectations, since=time.monotonic(), timeout=5.0)
    return {"agent_calls_ms": ms(calls_s), "domains": result}


def behind_the_back_restart(
    stack: ConsoleStack, browser: Browser, agents: Sequence[TestAgent]
) -> dict[str, Any]:
    """Stop hostwatch, change domains on two hosts, start hostwatch: how soon is the list right?"""
    hostwatch = stack.procs["hostwatch"]
    hostwatch.send_signal(signal.SIGTERM)
    hostwatch.wait(15)
    new_name = "bb-restart-new"
    define_behind_the_back(agents[1], new_name, vcpus=3, memory_mib=192)
    gone = agents[-2].domains[1]
    undefine_behind_the_back(agents[-2], str(gone.uuid))
    expectations = [
        Expectation(new_name, present=True, vcpus=3, memory_mib=192),
        Expectation(gone.name, present=False),
    ]
    stale = {
        e.name: e.right(browser.json("/api/v1/domains/?" + urlencode({"q": e.name}))["results"])
        for e in expectations
    }
    started = time.monotonic()
    stack._spawn("hostwatch", [sys.executable, "manage.py", "hostwatch"])  # as ConsoleStack.start does
    result = follow(browser, expectations, since=started, timeout=60.0)
    return {"right_while_hostwatch_down": stale, "domains": result}
