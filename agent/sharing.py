"""Sharing one domain's console: who watches, and the one viewer who types.

Serial and graphical consoles share the same rules. Anyone may watch; one viewer at a time holds
control, and only its input reaches the guest. The first viewer who may type gets control when
nobody holds it; anyone else who may type takes it with an explicit request, and everyone is
told ("bob took control"). Control is never handed on by itself: when its holder leaves, nobody
types until someone takes it.

Viewers are told with presence notices, JSON text frames on their console socket:
`{"type": "presence", "viewers": [names], "controller": name | null, "you": id,
"controller_id": id | null, "event": "..."}`. Names are how the console named its users, so
one user with two tabs appears twice; `you` and `controller_id` tell each socket whether it is
the one holding control.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Iterable
from typing import Any, Protocol

from aiohttp import web

TAKE_CONTROL = "take-control"  # the `type` of a viewer's request for control
SEND_BREAK = "break"  # the `type` of a serial viewer's request for a break on the line
REQUESTS = frozenset({TAKE_CONTROL, SEND_BREAK})  # all a viewer may ask (as JSON text frames)


def request_type(message: str) -> str:
    """The `type` of a viewer's request ("" unless it is one of REQUESTS)."""
    try:
        request = json.loads(message)
    except ValueError:
        return ""
    kind = request.get("type") if isinstance(request, dict) else None
    return kind if isinstance(kind, str) and kind in REQUESTS else ""


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel a console's pumps and wait until each has finished (whatever each raised)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


_ids = itertools.count(1)


def viewer_id() -> int:
    """A fresh id for a viewer, unique within this agent's run."""
    return next(_ids)


class Viewer(Protocol):
    name: str
    can_interact: bool
    ident: int

    def offer(self, data: bytes | str) -> bool:
        """Queue output (bytes) or a notice (str) for this viewer; False if it cannot keep up."""
        ...


class SocketViewer:
    """What every console viewer is: a WebSocket, who it is (as the console says) and whether
    it may type; its `ident` tells it apart from the same user's other tabs."""

    def __init__(self, ws: web.WebSocketResponse, *, name: str = "", can_interact: bool = True) -> None:
        self.ws = ws
        self.name = name or "someone"
        self.can_interact = can_interact
        self.ident = viewer_id()
        self.reason = "console closed"  # why it ended, once it has


class SharedConsole:
    """The viewers of one console and the one of them holding control."""

    def __init__(self) -> None:
        self.viewers: list[Viewer] = []  # in arrival order
        self.controller: Viewer | None = None

    def join(self, viewer: Viewer) -> None:
        self.viewers.append(viewer)
        if self.controller is None and viewer.can_interact:
            self.controller = viewer  # nobody else types: no need to ask
        self.announce(f"{viewer.name} is watching")

    def leave(self, viewer: Viewer, *, announce: bool = True) -> bool:
        """Forget `viewer`; False if it was not here."""
        if viewer not in self.viewers:
            return False
        self.viewers.remove(viewer)
        if self.controller is viewer:
            self.controller = None  # until someone takes it, explicitly
        if announce:
            self.announce(f"{viewer.name} left")
        return True

    def may_type(self, viewer: Viewer) -> bool:
        return viewer is self.controller

    def request(self, viewer: Viewer, message: str) -> None:
        """A request for control from a viewer (a JSON text frame); anything else is ignored."""
        if request_type(message) != TAKE_CONTROL:
            return
        if not viewer.can_interact or viewer not in self.viewers or self.controller is viewer:
            return
        self.controller = viewer
        self.announce(f"{viewer.name} took control")

    def presence(self, viewer: Viewer, event: str = "") -> str:
        """The notice `viewer` gets: who watches, who types, and which of them it is."""
        controller = self.controller
        return json.dumps(
            {
                "type": "presence",
                "viewers": sorted(v.name for v in self.viewers),
                "controller": controller.name if controller is not None else None,
                "you": viewer.ident,
                "controller_id": controller.ident if controller is not None else None,
                "event": event,
            }
        )

    def announce(self, event: str) -> None:
        for viewer in list(self.viewers):
            viewer.offer(self.presence(viewer, event))
