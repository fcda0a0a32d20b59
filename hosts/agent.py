"""How the console reaches a host's agent from synchronous code (job handlers, services)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.client import AgentClient
from hosts.models import Host

T = TypeVar("T")

AGENT_TIMEOUT_SECONDS = 30.0


def agent_client(
    host: Host, *, timeout: float = AGENT_TIMEOUT_SECONDS, job_id: int | None = None
) -> AgentClient:
    """A client for `host`'s agent. With `job_id`, its mutating calls carry idempotency keys
    named after the job, so a retried job's calls are not done twice by the agent."""
    return AgentClient(
        host.url,
        host.secret,
        timeout=timeout,
        fingerprint=host.fingerprint,
        idempotency_key=f"job-{job_id}" if job_id is not None else "",
    )


def run_agent(
    host: Host,
    op: Callable[[AgentClient], Awaitable[T]],
    *,
    timeout: float = AGENT_TIMEOUT_SECONDS,
    job_id: int | None = None,
) -> T:
    """Run one agent conversation to completion (each call gets its own event loop and session).
    Job handlers pass their job's id (`ctx.job.pk`): see `agent_client`."""

    async def conversation() -> T:
        async with agent_client(host, timeout=timeout, job_id=job_id) as client:
            return await op(client)

    return asyncio.run(conversation())
