"""How the console reaches a host's agent from synchronous code (job handlers, services)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.client import AgentClient
from hosts.models import Host

T = TypeVar("T")

AGENT_TIMEOUT_SECONDS = 30.0


def agent_client(host: Host, *, timeout: float = AGENT_TIMEOUT_SECONDS) -> AgentClient:
    return AgentClient(host.url, host.secret, timeout=timeout, fingerprint=host.fingerprint)


def run_agent(
    host: Host, op: Callable[[AgentClient], Awaitable[T]], *, timeout: float = AGENT_TIMEOUT_SECONDS
) -> T:
    """Run one agent conversation to completion (each call gets its own event loop and session)."""

    async def conversation() -> T:
        async with agent_client(host, timeout=timeout) as client:
            return await op(client)

    return asyncio.run(conversation())
