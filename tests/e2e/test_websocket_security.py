"""WebSocket refusals on the live stack: no session, another origin, forged or stale tickets."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e]


def ws_url(stack: Stack, path: str) -> str:
    return stack.url.replace("http://", "ws://") + path


async def first_message(stack: Stack, path: str, **kwargs: object) -> tuple[aiohttp.WSMessage, int | None]:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(stack, path), **kwargs) as ws:  # type: ignore[arg-type]
        msg = await asyncio.wait_for(ws.receive(), 10)
        return msg, ws.close_code


def test_events_socket_refuses_anonymous(stack: Stack) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(first_message(stack, "/ws/events/"))
    assert refused.value.status == 403


def test_forged_ticket_is_refused_with_a_reason(stack: Stack) -> None:
    msg, code = asyncio.run(first_message(stack, "/ws/console/?ticket=forged"))
    assert code == 4403
    assert msg.extra == "unknown ticket"


def test_missing_ticket_is_refused(stack: Stack) -> None:
    _, code = asyncio.run(first_message(stack, "/ws/console/"))
    assert code == 4403


@pytest.mark.parametrize("path", ["/ws/events/", "/ws/console/?ticket=x"])
def test_socket_from_another_origin_is_refused(stack: Stack, path: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(first_message(stack, path, headers={"Origin": "http://evil.example"}))
    assert refused.value.status == 403


def test_socket_from_our_own_origin_is_let_through(stack: Stack) -> None:
    _, code = asyncio.run(first_message(stack, "/ws/console/?ticket=x", headers={"Origin": stack.url}))
    assert code == 4403  # reached the consumer, which judged the ticket
