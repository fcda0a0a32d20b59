"""The soak's probe into the web process: the console's ASGI application, plus one path that says
what its heap holds (bench/heap_probe.py), to tell a leak from the allocator's growth
(bench/soak_bench.py --probe). Only the bench serves this module; the console never does.

    GET /_soak/probe  ->  {"malloc": {...}, "pymalloc_blocks": N, "gc_objects": N, "types": {...}}
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench.heap_probe import reading
from console.asgi import application as console_application

PATH = "/_soak/probe"


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == PATH:
        body = json.dumps(await asyncio.to_thread(reading)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    await console_application(scope, receive, send)
