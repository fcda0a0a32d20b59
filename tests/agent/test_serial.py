"""Serial console sessions without libvirt: a fake stream checks the bookkeeping (the real
console is exercised in test_real_libvirt.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, cast

import libvirt
import pytest
from aiohttp import web

from agent.errors import LibvirtFailure
from agent.events import EventHub
from agent.protocol import DomainEvent
from agent.serial import _QUEUE_CHUNKS, HISTORY_BYTES, SerialConsoles, SerialViewer

pytestmark = pytest.mark.asyncio

READABLE = libvirt.VIR_STREAM_EVENT_READABLE


class FakeStream:
    def __init__(self) -> None:
        self.callback: Any = None
        self.incoming: list[bytes | int] = []
        self.sent: list[bytes] = []
        self.aborted = False
        self.finished = False

    def eventAddCallback(self, _events: int, cb: Any, _opaque: object) -> None:
        self.callback = cb

    def eventRemoveCallback(self) -> None:
        self.callback = None

    def recv(self, _n: int) -> bytes | int:
        return self.incoming.pop(0) if self.incoming else -2

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def abort(self) -> None:
        self.aborted = True

    def finish(self) -> None:
        self.finished = True

    def feed(self, *chunks: bytes) -> None:
        self.incoming.extend(chunks)
        assert self.callback is not None
        self.callback(self, READABLE, None)


class Opener:
    def __init__(self) -> None:
        self.streams: list[FakeStream] = []

    async def __call__(self) -> libvirt.virStream:
        stream = FakeStream()
        self.streams.append(stream)
        return cast(libvirt.virStream, stream)


def viewer(name: str = "", *, can_interact: bool = True) -> SerialViewer:
    return SerialViewer(cast(web.WebSocketResponse, None), name=name, can_interact=can_interact)


def _drain_queue(v: SerialViewer) -> list[bytes | str]:
    out = []
    while not v._out.empty():
        out.append(v._out.get_nowait())
    return out


def queued(v: SerialViewer) -> list[bytes]:
    """The console output queued for `v` (presence notices left out)."""
    return [item for item in _drain_queue(v) if isinstance(item, bytes)]


def notices(v: SerialViewer) -> list[dict[str, Any]]:
    """The presence notices queued for `v` (output left out)."""
    return [json.loads(item) for item in _drain_queue(v) if isinstance(item, str)]


async def test_viewers_share_one_stream_until_the_last_leaves() -> None:
    consoles, opener, dom = SerialConsoles(EventHub()), Opener(), uuid.uuid4()
    a, b = viewer(), viewer()
    session = await consoles.join(dom, a, opener)
    assert await consoles.join(dom, b, opener) is session
    assert len(opener.streams) == 1
    stream = opener.streams[0]
    stream.feed(b"hello")
    assert queued(a) == [b"hello"] and queued(b) == [b"hello"]
    await session.write(b"from a", a)  # the first to come types: nobody else did
    await session.write(b"from b", b)  # b watches until it takes control
    await asyncio.sleep(0.01)
    assert stream.sent == [b"from a"]
    session.leave(a)
    assert not stream.aborted and consoles.session(dom) is session
    session.leave(b)
    assert stream.aborted and stream.callback is None and consoles.session(dom) is None
    # The next viewer opens a fresh stream.
    c = viewer()
    fresh = await consoles.join(dom, c, opener)
    assert fresh is not session and len(opener.streams) == 2
    fresh.leave(c)
    assert opener.streams[1].aborted


async def test_concurrent_joiners_open_once() -> None:
    consoles, opener, dom = SerialConsoles(EventHub()), Opener(), uuid.uuid4()
    viewers = [viewer() for _ in range(5)]
    sessions = await asyncio.gather(*(consoles.join(dom, v, opener) for v in viewers))
    assert len(opener.streams) == 1 and len(set(map(id, sessions))) == 1
    for v in viewers:
        sessions[0].leave(v)
    assert opener.streams[0].aborted and not consoles._locks


async def test_a_slow_viewer_is_dropped_not_the_others() -> None:
    consoles, opener, dom = SerialConsoles(EventHub()), Opener(), uuid.uuid4()
    slow, fast = viewer(), viewer()
    session = await consoles.join(dom, slow, opener)
    await consoles.join(dom, fast, opener)
    stream = opener.streams[0]
    stream.feed(*[b"x"] * (_QUEUE_CHUNKS - 10))
    assert len(queued(fast)) == _QUEUE_CHUNKS - 10  # the fast one keeps up
    stream.feed(*[b"y"] * 20)
    assert slow._ended.is_set() and "too slow" in slow.reason
    assert session.viewers == {fast} and not session.closed and not stream.aborted
    assert len(queued(fast)) == 20
    session.leave(fast)
    assert stream.aborted


async def test_stream_end_closes_every_viewer_with_the_reason() -> None:
    hub = EventHub()
    consoles, opener, dom = SerialConsoles(hub), Opener(), uuid.uuid4()
    a, b = viewer(), viewer()
    session = await consoles.join(dom, a, opener)
    await consoles.join(dom, b, opener)
    opener.streams[0].feed(b"bye", b"")
    for v in (a, b):
        assert v.reason == "console stream ended" and queued(v) == [b"bye", b""]  # flushed, then EOF
        v.end("ignored", flush=False)  # what the grace timer would do; idempotent
        assert v._ended.is_set() and v.reason == "console stream ended"
        assert v._grace is not None
        v._grace.cancel()  # (run() does this when it returns)
    assert opener.streams[0].finished and consoles.session(dom) is None
    assert session.on_domain_event not in hub._listeners
    session.leave(a)  # late leaves are harmless
    # A domain event ends a session too.
    c = viewer()
    other = await consoles.join(dom, c, opener)
    other.on_domain_event(DomainEvent(uuid=dom, event="stopped", state="shutoff", name="x"))
    assert other.closed and c.reason == "domain stopped" and opener.streams[1].aborted
    assert c._grace is not None
    c._grace.cancel()


async def test_a_cancelled_open_does_not_leak_the_stream() -> None:
    consoles, dom = SerialConsoles(EventHub()), uuid.uuid4()
    release = asyncio.Event()
    stream = FakeStream()

    async def slow_open() -> libvirt.virStream:
        await release.wait()
        return cast(libvirt.virStream, stream)

    joiner = asyncio.ensure_future(consoles.join(dom, viewer(), slow_open))
    await asyncio.sleep(0.01)
    joiner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await joiner
    release.set()
    await asyncio.sleep(0.01)
    assert stream.aborted and consoles.session(dom) is None and not consoles._locks


async def test_one_types_at_a_time_and_taking_control_is_explicit_and_announced() -> None:
    consoles, opener, dom = SerialConsoles(EventHub()), Opener(), uuid.uuid4()
    ana, bob, vic = viewer("ana"), viewer("bob"), viewer("vic", can_interact=False)
    session = await consoles.join(dom, ana, opener)
    await consoles.join(dom, bob, opener)
    await consoles.join(dom, vic, opener)
    stream = opener.streams[0]
    last = notices(vic)[-1]
    assert last == {
        "type": "presence",
        "viewers": ["ana", "bob", "vic"],
        "controller": "ana",
        "you": vic.ident,
        "controller_id": ana.ident,
        "event": "vic is watching",
    }
    session.sharing.request(bob, json.dumps({"type": "take-control"}))
    assert notices(ana)[-1]["event"] == "bob took control" and notices(vic)[-1]["controller"] == "bob"
    for who, text in ((ana, b"ana types"), (bob, b"bob types"), (vic, b"vic types")):
        await session.write(text, who)
    await asyncio.sleep(0.01)
    assert stream.sent == [b"bob types"]
    session.sharing.request(vic, json.dumps({"type": "take-control"}))  # a watcher may not
    session.sharing.request(ana, "not json")
    assert session.sharing.controller is bob
    session.leave(bob)  # control is not handed on by itself
    assert session.sharing.controller is None and notices(ana)[-1] == {
        "type": "presence",
        "viewers": ["ana", "vic"],
        "controller": None,
        "you": ana.ident,
        "controller_id": None,
        "event": "bob left",
    }
    await session.write(b"nobody", ana)
    await asyncio.sleep(0.01)
    assert stream.sent == [b"bob types"]


async def test_two_tabs_of_one_user_are_two_viewers_and_only_one_is_told_it_has_control() -> None:
    consoles, opener, dom = SerialConsoles(EventHub()), Opener(), uuid.uuid4()
    first, second = viewer("ana"), viewer("ana")
    session = await consoles.join(dom, first, opener)
    await consoles.join(dom, second, opener)
    to_first, to_second = notices(first)[-1], notices(second)[-1]
    assert to_first["viewers"] == ["ana", "ana"] and to_first["controller"] == "ana"
    assert to_first["controller_id"] == to_first["you"] == first.ident
    assert to_second["controller_id"] == first.ident != to_second["you"]
    await session.write(b"second tab", second)
    await asyncio.sleep(0.01)
    assert opener.streams[0].sent == []


async def test_a_recorded_console_keeps_its_history_for_late_viewers_and_after_it_ends() -> None:
    hub, dom = EventHub(), uuid.uuid4()
    opener = Opener()
    consoles = SerialConsoles(hub, lambda _uuid: opener)
    await consoles.record(dom)
    stream = opener.streams[0]
    stream.feed(b"x" * (HISTORY_BYTES - 10), b"BOOT-BANNER")  # more than it keeps
    late = viewer("late")
    session = await consoles.join(dom, late, opener)
    assert len(opener.streams) == 1  # it joined the recording
    (replayed,) = queued(late)
    assert len(replayed) == HISTORY_BYTES and replayed.endswith(b"BOOT-BANNER")
    session.leave(late)
    assert not stream.aborted  # still recording without viewers
    stream.feed(b"more")
    session.close("domain stopped")
    assert consoles.history(dom) == replayed[4:] + b"more"


async def test_a_break_is_sent_for_the_viewer_holding_control_only() -> None:
    sent: list[str] = []

    async def breaker() -> None:
        sent.append("break")

    async def broken() -> None:
        raise LibvirtFailure("Xen has no such command")

    consoles = SerialConsoles(EventHub(), breaker_for=lambda _uuid: breaker)
    opener, dom = Opener(), uuid.uuid4()
    ana, bob = viewer("ana"), viewer("bob")
    session = await consoles.join(dom, ana, opener)
    await consoles.join(dom, bob, opener)
    await session.send_break(bob)  # bob watches: no break
    await session.send_break(ana)
    assert sent == ["break"]
    session._breaker = broken
    notices(ana)
    await session.send_break(ana)
    (error,) = [json.loads(n) for n in _drain_queue(ana) if isinstance(n, str)]
    assert error == {"type": "error", "detail": "break not sent: Xen has no such command"}
