"""Supervision of `make run`'s processes: restart what dies, stop in order, leave nothing behind.

- A part that exits on its own is started again after a backoff (1 s, doubling up to 30 s; back
  to 1 s once it has run for a minute). One that exits CRASH_LOOP_EXITS times within
  CRASH_LOOP_SECONDS is given up on, named in the launcher's output and in /healthz; the others
  keep running.
- Children die with the launcher whatever ends it: each gets PR_SET_PDEATHSIG (SIGKILL when the
  launcher dies without stopping them), and the launcher records them (pid and start time) in
  `launcher.json` while it holds `launcher.lock`. A launcher that finds the lock free and a record
  left behind (its predecessor was killed before it could clean up) stops what is still alive of
  it before starting anything, instead of failing with "port is taken".
- Stopping goes by stages (`Part.stage`): the web and the worker first (the worker's warm
  shutdown lets a running job finish), then hostwatch, then the agent, and Redis last.

No Django import here: the launcher uses it before Django is set up; /healthz reads the state
file with `supervised_processes`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "launcher.json"
LOCK_FILE = "launcher.lock"
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0  # a part that ran this long starts its backoff afresh
CRASH_LOOP_EXITS = 5
CRASH_LOOP_SECONDS = 120.0

_PR_SET_PDEATHSIG = 1


class AlreadyRunning(RuntimeError):
    pass


def _die_with_parent(parent: int, umask: int | None = None) -> Callable[[], None]:
    """A preexec_fn: SIGKILL this child when its parent dies (and exit now if it already has).
    SIGKILL, not SIGTERM: an orphaned worker would otherwise wait, unsupervised, for its jobs to
    end; a job cut short is taken over by the next start's sweeper anyway. Sets `umask` too."""
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)
        if umask is not None:
            os.umask(umask)

    return arm


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` (clock ticks since boot, /proc/<pid>/stat field 22), which tells a
    process from a later one that reused its pid; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 and fields[0] != "Z" else None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group `pid` leads (each part is a session leader), so whatever it
    started goes too; the process alone if it leads none."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Part:
    """One supervised process."""

    name: str
    argv: list[str]
    stage: int  # stop order: lower stages stop first
    stop_timeout: float = 10.0
    env: dict[str, str] | None = None
    umask: int | None = None  # None: the launcher's own
    proc: subprocess.Popen[bytes] | None = None
    state: str = "new"  # running, restarting, given up, stopped
    restarts: int = 0
    last_exit: str = ""
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = field(default_factory=lambda: BACKOFF_FIRST_SECONDS)
    exits: deque[float] = field(default_factory=deque)

    def summary(self) -> dict[str, Any]:
        pid = self.proc.pid if self.proc is not None and self.proc.poll() is None else None
        return {
            "state": self.state,
            "pid": pid,
            "start_time": process_start_time(pid) if pid else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


class Supervisor:
    def __init__(self, data_dir: Path, *, cwd: Path, log: Callable[[str], None]) -> None:
        self.data_dir = data_dir
        self.cwd = cwd
        self.log = log
        self.parts: list[Part] = []
        self._lock_fd: int | None = None

    # -- the lock and what a killed launcher left ------------------------------------------------
    def acquire(self) -> None:
        """Hold this data directory's launcher lock; stop what a killed launcher left behind."""
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_state(self.data_dir).get("launcher", {}).get("pid", "?")
            raise AlreadyRunning(
                f"Domus is already running from {self.data_dir} (launcher pid {holder}); stop it "
                "first, or set DOMUS_DATA_DIR for another one"
            ) from None
        self._lock_fd = fd
        self._reap_leftovers()

    def _reap_leftovers(self) -> None:
        state = _read_state(self.data_dir)
        left = []
        for name, part in state.get("parts", {}).items():
            pid, started = part.get("pid"), part.get("start_time")
            if pid and started is not None and process_start_time(pid) == started:
                left.append((name, int(pid)))
        if not left:
            return
        launcher = state.get("launcher", {}).get("pid", "?")
        names = ", ".join(f"{name} (pid {pid})" for name, pid in left)
        self.log(f"a launcher (pid {launcher}) was killed and left {names} running; stopping them")
        for _name, pid in left:
            _signal_group(pid, signal.SIGTERM)
            _signal_group(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(process_start_time(pid) for _n, pid in left):
            time.sleep(0.1)
        for _name, pid in left:
            if process_start_time(pid) is not None:
                _signal_group(pid, signal.SIGKILL)
        (self.data_dir / STATE_FILE).unlink(missing_ok=True)

    # -- running --------------------------------------------------------------------------------
    def add(self, part: Part) -> Part:
        self.parts.append(part)
        return part

    def start(self, part: Part) -> None:
        part.proc = subprocess.Popen(
            part.argv,
            cwd=self.cwd,
            env=part.env,
            # Its own session: Ctrl-C in the terminal reaches the launcher only, which stops the
            # parts in order.
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid(), part.umask),  # the launcher has one thread: safe
        )
        part.state = "running"
        part.started_at = time.monotonic()
        self.save()

    def poll(self) -> None:
        """Notice exits and restart what is due; call it often (every ~0.2 s)."""
        now = time.monotonic()
        for part in self.parts:
            if part.state == "running" and part.proc is not None and (code := part.proc.poll()) is not None:
                self._exited(part, code, now)
            elif part.state == "restarting" and now >= part.next_start:
                part.restarts += 1
                self.log(f"restarting {part.name} (restart {part.restarts})")
                self.start(part)

    def _exited(self, part: Part, code: int, now: float) -> None:
        part.last_exit = _describe_exit(code)
        if now - part.started_at >= HEALTHY_AFTER_SECONDS:
            part.backoff = BACKOFF_FIRST_SECONDS
        part.exits.append(now)
        while part.exits and now - part.exits[0] > CRASH_LOOP_SECONDS:
            part.exits.popleft()
        if len(part.exits) >= CRASH_LOOP_EXITS:
            part.state = "given up"
            self.log(
                f"{part.name} {part.last_exit} ({len(part.exits)} exits in {CRASH_LOOP_SECONDS:.0f} s): "
                "giving up on it (its output is above). The rest keeps running; fix the cause and "
                "start Domus again."
            )
        else:
            part.state = "restarting"
            part.next_start = now + part.backoff
            self.log(f"{part.name} {part.last_exit}; restarting it in {part.backoff:g} s")
            part.backoff = min(part.backoff * 2, BACKOFF_MAX_SECONDS)
        self.save()

    def given_up(self) -> list[Part]:
        return [part for part in self.parts if part.state == "given up"]

    # -- stopping -------------------------------------------------------------------------------
    def stop(self, *, urgent: Callable[[], bool] = lambda: False) -> None:
        """Stop every part, stage by stage; `urgent()` true (a second Ctrl-C) kills what is left."""
        for stage in sorted({part.stage for part in self.parts}):
            parts = [p for p in self.parts if p.stage == stage]
            for part in parts:
                part.state = "stopped"
                if part.proc is not None and part.proc.poll() is None:
                    _signal_group(part.proc.pid, signal.SIGTERM)
            started = time.monotonic()
            deadline = started + max(p.stop_timeout for p in parts)
            told = False
            while alive := [p for p in parts if p.proc is not None and p.proc.poll() is None]:
                if time.monotonic() > deadline or urgent():
                    break
                if not told and time.monotonic() > started + 3:
                    names = ", ".join(p.name for p in alive)
                    self.log(f"waiting for {names} to finish (Ctrl-C again stops at once)")
                    told = True
                time.sleep(0.1)
            for part in parts:
                if part.proc is not None and part.proc.poll() is None:
                    self.log(f"{part.name} did not stop in time; killing it")
                    _signal_group(part.proc.pid, signal.SIGKILL)
                    part.proc.wait(5)
        (self.data_dir / STATE_FILE).unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the state file -------------------------------------------------------------------------
    def save(self) -> None:
        state = {
            "launcher": {"pid": os.getpid(), "start_time": process_start_time(os.getpid())},
            "parts": {part.name: part.summary() for part in self.parts},
        }
        path = self.data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.chmod(0o600)
        tmp.replace(path)


def _read_state(data_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def supervised_processes(data_dir: Path) -> dict[str, Any] | None:
    """What the launcher of `data_dir` says of its parts, for /healthz; None when no live launcher
    supervises this console (production: the container runtime or systemd does)."""
    state = _read_state(data_dir)
    launcher = state.get("launcher", {})
    pid = launcher.get("pid")
    if not pid or process_start_time(int(pid)) != launcher.get("start_time"):
        return None
    parts = {
        name: {key: part.get(key) for key in ("state", "restarts", "last_exit")}
        for name, part in state.get("parts", {}).items()
    }
    given_up = [name for name, part in parts.items() if part["state"] == "given up"]
    return {"ok": not given_up, "given_up": given_up, "parts": parts}
