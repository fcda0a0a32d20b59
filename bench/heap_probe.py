"""What a process's heap holds, read from inside it (bench/soak_bench.py --probe): glibc's
mallinfo2() over every arena (bytes handed out, free inside the heap, arenas, mmapped chunks),
pymalloc's blocks, the collector's objects by type, and resident memory by kind of mapping.
When VmRSS climbs and the bytes in use do not, what grows is the allocator's holes, not
something the program keeps.

Plain standard library: both the console's web process (bench/soak_probe.py) and the agent
(bench/console_paths.py agent --probe) serve it. Call `reading()` on a thread of its own, never
in a signal handler (where finalizers run inside the interrupted frame); it collects nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections import Counter
from typing import Any

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
