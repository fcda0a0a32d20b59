"""What every benchmark's run begins and ends with: its work directory and results file, Ctrl-C
and SIGTERM turned into KeyboardInterrupt (so that everything it started is stopped), a record
of the machine and the code measured, and the results written and printed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.procstats import machine_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"


def sized(args: argparse.Namespace, quick: Mapping[str, Any], full: Mapping[str, Any]) -> argparse.Namespace:
    """Each size the command line left unset (None) taken from `quick` with --quick, else from
    `full`; returns `args`."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


@dataclass(frozen=True)
class Session:
    stamp: str  # when it began, as in the names of its directory and file
    workdir: Path
    output: Path  # the results, as JSON


def begin(kind: str, workdir: Path | None, output: Path | None) -> Session:
    """Name the run's directory and results file (`kind`-<timestamp>.json unless given), and
    make Ctrl-C and SIGTERM raise KeyboardInterrupt (SIGINT too when started in the background,
    where it is ignored)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return Session(
        stamp=stamp,
        workdir=(workdir or Path(f"/tmp/domus-bench-{stamp}")).resolve(),  # noqa: S108 - our own dir
        output=output or RESULTS_DIR / f"{kind}-{stamp}.json",
    )


def code_revision() -> dict[str, Any]:
    """The commit measured, and whether the code under test had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "agent", "hosts", "domains", "console")
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(dirty)}


def header(session: Session, params: Mapping[str, Any], targets: Any, *, quiet_s: float) -> dict[str, Any]:
    """The start of the results: what was asked, on what machine and code, against which
    targets, and how busy the machine was over `quiet_s` seconds before the start (other work
    on it skews every number)."""
    busy = machine_cpu_seconds()
    time.sleep(quiet_s)
    background = round(100 * (machine_cpu_seconds() - busy) / quiet_s, 1)
    return {
        "started_at": session.stamp,
        "params": dict(params),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "node": platform.node(),
            "background_busy_pct_core": background,
        },
        "code": code_revision(),
        "targets": targets,
        "workdir": str(session.workdir),
    }


def finish(session: Session, results: Mapping[str, Any], render: Callable[[Any], str]) -> int:
    """Write the results, print the report and where the results are; the exit status."""
    session.output.parent.mkdir(parents=True, exist_ok=True)
    session.output.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(render(results))
    print(f"\nresults: {session.output}")
    return 0
