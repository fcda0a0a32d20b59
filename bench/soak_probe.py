"""The soak's probe into the web process: the console's ASGI application, plus one path that says
what the heap holds, to tell a leak from the allocator's growth (bench/soak_bench.py --probe).

    GET /_soak/probe  ->  {"malloc": {...}, "pymalloc_blocks": N, "gc_objects": N, "types": {...}}

- malloc: glibc's mallinfo2() over every arena: bytes handed out (`in_use`), bytes free inside
  the heap (`free`), the arenas' size and the mmapped chunks. When VmRSS climbs and `in_use`
  does not, what grows is the allocator's holes, not something the program keeps.
- pymalloc_blocks: sys.getallocatedblocks(), the objects' small-block allocator.
- types: the 60 most numerous types among the objects the collector tracks.

Everything is read on a thread of its own (never in a signal handler, where finalizers run inside
the interrupted frame), without a collection: what is counted is what the process holds then.
Only the bench serves this module; the console never does.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import sys
from collections import Counter
from typing import Any

from console.asgi import application as console_application

PATH = "/_soak/probe"
TOP_TYPES = 60


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> dict[str, int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallinfo2"):  # glibc older than 2.33, or not glibc
        return None
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return {
        "arena": info.arena,
        "mmapped": info.hblkhd,
        "in_use": info.uordblks,
        "free": info.fordblks,
        "free_chunks": info.ordblks,
        "top_releasable": info.keepcost,
    }


def _rss_by_mapping() -> dict[str, int]:
    """Resident KiB by kind of mapping, from /proc/self/smaps: malloc's main heap; anonymous
    mappings of 8 MiB (threads' stacks, mostly), of whole MiB (pymalloc's 1 MiB arenas, which the
    kernel merges when adjacent, and glibc's per-thread arenas), of other sizes; and files."""
    kinds: Counter[str] = Counter()
    kind = "other"
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                start, end = (int(x, 16) for x in head[0].split("-"))
                size, name = end - start, (head[5] if len(head) > 5 else "")
                if name == "[heap]":
                    kind = "heap"
                elif name:
                    kind = "files" if not name.startswith("[") else "other"
                elif size == 8 << 20:
                    kind = "anon 8 MiB"
                elif size % (1 << 20) == 0:
                    kind = "anon whole MiB"
                else:
                    kind = "anon other"
            elif head[0] == "Rss:":
                kinds[kind] += int(head[1])
    return dict(kinds)


def reading() -> dict[str, Any]:
    objects = gc.get_objects()
    types = Counter(type(o).__qualname__ for o in objects)
    count = len(objects)
    del objects
    return {
        "malloc": _mallinfo(),
        "pymalloc_blocks": sys.getallocatedblocks(),
        "rss_kib": _rss_by_mapping(),
        "gc_objects": count,
        "types": dict(types.most_common(TOP_TYPES)),
    }


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
