"""What the benchmarks print: timestamped progress lines and plain-text tables."""

from __future__ import annotations

import time
from collections.abc import Sequence


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns aligned, a rule under the first row (the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out
