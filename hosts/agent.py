"""How the console reaches a host's agent from synchronous code (job handlers, services)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from agent.client import AgentClient, AgentError, is_transient
from console.jobs.registry import JobCancelled, JobFailed
from hosts.models import Host

if TYPE_CHECKING:
    from console.jobs.runner import JobContext

T = TypeVar("T")

AGENT_TIMEOUT_SECONDS = 30.0
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


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


def run_agent_for_job(ctx: JobContext, host: Host, op: Callable[[AgentClient], Awaitable[T]]) -> T:
    """`run_agent` for a job handler. Its mutating calls carry the job's idempotency key; an
    attempt that lost the job stops before calling. A transient fault (the agent unreachable, or
    its libvirt connection down) is waited out with backoff until the job's deadline, each wait
    said in the job's log; then the job fails saying so. The whole conversation is tried again:
    agent operations are idempotent, and the repeated calls are answered from the agent's memory
    where it still has it."""
    delay = RETRY_FIRST_SECONDS
    waited = False
    while True:
        ctx.ensure_owned()
        # A call that hangs (a stopped agent) ends with the job's deadline, not long after it.
        timeout = min(AGENT_TIMEOUT_SECONDS, max(ctx.seconds_left(), RETRY_FIRST_SECONDS * 5))
        try:
            result = run_agent(host, op, timeout=timeout, job_id=ctx.job.pk)
        except AgentError as exc:
            if not is_transient(exc):
                raise
            left = ctx.seconds_left()
            if left <= 0:
                raise JobFailed(
                    f"{host.name}: {exc.detail}; gave up at the job's deadline "
                    f"({ctx.deadline:%H:%M:%S} UTC). If a request was under way when the agent stopped "
                    "answering, it may still be carried out: the domain's state will show it."
                ) from exc
            wait = min(delay, left)
            if not waited:
                ctx.progress(ctx.job.progress, f"Waiting for {host.name}'s agent")
                waited = True
            ctx.log(f"{host.name}: {exc.detail}; retrying in {wait:.0f} s")
            ctx.sleep(wait)
            if ctx.cancel_requested():
                raise JobCancelled(
                    f"Cancelled while waiting for {host.name}'s agent; a request under way when it "
                    "stopped answering may still be carried out."
                ) from exc
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            continue
        if waited:
            ctx.log(f"{host.name}'s agent answers again")
        return result
