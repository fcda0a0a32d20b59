"""Idempotency keys: a repeated mutating request is answered from memory, not done again.

The console sends `Idempotency-Key` on the mutating calls a job makes (the key names the job and
the operation, see agent/client.py). A job retried after its worker died repeats its calls with
the same keys; the agent replays the answer it gave the first time, with `Idempotent-Replayed:
true`, instead of asking libvirt again. A repeat that arrives while the first is still being
worked on waits for it.

Only successful answers are kept: after an error the console may try again, and then the work
is done. Entries live in memory, per calling console (two consoles never share a key space),
for at most `ttl` seconds and `max_entries` per console. The same key with a different request
(method, path, query or body) is refused with 422: it is a bug in the caller. An upload's pieces
are left alone (their bodies stream to disk; a repeated piece is refused by its offset).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from agent.api import CONSOLE_ID, STREAMED_BODY_ROUTES, problem_response

log = logging.getLogger("agent.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_KEY_LENGTH = 255

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class StoredAnswer:
    fingerprint: str
    status: int
    body: bytes
    content_type: str
    expires_at: float


class IdempotencyStore:
    """Recent answers by (console, key); bounded in size and age."""

    def __init__(
        self,
        *,
        max_entries: int = 1000,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self._answers: dict[str, OrderedDict[str, StoredAnswer]] = {}
        self._pending: dict[tuple[str, str], tuple[str, asyncio.Event]] = {}

    def _console(self, console_id: str) -> OrderedDict[str, StoredAnswer]:
        answers = self._answers.setdefault(console_id, OrderedDict())
        now = self.clock()
        while answers:  # oldest first: every entry lives `ttl`, so expiry follows insertion
            oldest = next(iter(answers.values()))
            if oldest.expires_at > now:
                break
            answers.popitem(last=False)
        return answers

    def get(self, console_id: str, key: str) -> StoredAnswer | None:
        return self._console(console_id).get(key)

    def put(self, console_id: str, key: str, answer: StoredAnswer) -> None:
        answers = self._console(console_id)
        answers[key] = answer
        answers.move_to_end(key)
        while len(answers) > self.max_entries:
            answers.popitem(last=False)

    def in_flight(self, console_id: str, key: str) -> tuple[str, asyncio.Event] | None:
        """(fingerprint, done) of a request with this key that is still being worked on."""
        return self._pending.get((console_id, key))

    def begin(self, console_id: str, key: str, fingerprint: str) -> None:
        self._pending[(console_id, key)] = (fingerprint, asyncio.Event())

    def end(self, console_id: str, key: str) -> None:
        _fingerprint, done = self._pending.pop((console_id, key))
        done.set()

    def __len__(self) -> int:
        return sum(len(self._console(console_id)) for console_id in list(self._answers))


def _replay(answer: StoredAnswer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body)
    response.content_type = answer.content_type
    response.headers[REPLAYED_HEADER] = "true"
    return response


def make_idempotency(store: IdempotencyStore) -> Middleware:
    """The middleware; it must run inside the auth middleware (it needs the caller's id)."""

    @web.middleware
    async def idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get(HEADER)
        console_id = request.get(CONSOLE_ID)
        if key is None or request.method not in MUTATING or console_id is None or _streamed(request):
            return await handler(request)
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            return problem_response(
                400, "invalid_idempotency_key", f"{HEADER}: 1 to {MAX_KEY_LENGTH} printable characters"
            )
        body = await request.read()  # kept by aiohttp: the handler reads it again
        fingerprint = hashlib.sha256(
            b"\0".join([request.method.encode(), request.path_qs.encode(), body])
        ).hexdigest()
        while True:
            answer = store.get(console_id, key)
            if answer is not None:
                if answer.fingerprint != fingerprint:
                    return _mismatch(key)
                log.info("replayed the answer to %s %s (%s: %s)", request.method, request.path, HEADER, key)
                return _replay(answer)
            in_flight = store.in_flight(console_id, key)
            if in_flight is None:
                break
            if in_flight[0] != fingerprint:
                return _mismatch(key)
            await in_flight[1].wait()  # the first request with this key is still being worked on
        store.begin(console_id, key, fingerprint)
        try:
            response = await handler(request)
            if isinstance(response, web.Response) and 200 <= response.status < 300:
                payload = response.body
                if isinstance(payload, bytes):
                    answer = StoredAnswer(
                        fingerprint=fingerprint,
                        status=response.status,
                        body=payload,
                        content_type=response.content_type,
                        expires_at=store.clock() + store.ttl,
                    )
                    store.put(console_id, key, answer)
            return response
        finally:
            store.end(console_id, key)

    return idempotency


def _streamed(request: web.Request) -> bool:
    """A body of bytes streamed to its handler: never read whole here (an upload's piece)."""
    return request.match_info.route.name in STREAMED_BODY_ROUTES


def _mismatch(key: str) -> web.Response:
    return problem_response(
        422,
        "idempotency_key_reused",
        f"{HEADER} {key!r} was already used for a different request; a key names one request",
    )
