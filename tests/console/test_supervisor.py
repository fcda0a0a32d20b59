"""make run's supervisor (console/supervisor.py) with real processes: restarts with backoff, a
crash loop given up on, stop by stages, the lock, what a killed launcher leaves behind, and
children that die with their launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from console import supervisor as supervisor_module
from console.supervisor import AlreadyRunning, Part, Supervisor, process_start_time, supervised_processes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "BACKOFF_FIRST_SECONDS", 0.1)
    monkeypatch.setattr(supervisor_module, "CRASH_LOOP_EXITS", 3)
    monkeypatch.setattr(supervisor_module, "CRASH_LOOP_SECONDS", 30.0)


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[tuple[Supervisor, list[str]]]:
    said: list[str] = []
    running = Supervisor(tmp_path, cwd=tmp_path, log=said.append)
    running.acquire()
    yield running, said
    running.stop()


def poll_until(sup: Supervisor, check: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not in time"
        sup.poll()
        time.sleep(0.05)


def test_a_part_that_dies_is_restarted_and_said_so(quick: None, sup: tuple[Supervisor, list[str]]) -> None:
    running, said = sup
    part = running.add(Part("sleeper", ["sleep", "60"], stage=0))
    running.start(part)
    first = part.proc
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    poll_until(running, lambda: part.restarts == 1 and part.state == "running")
    assert part.proc is not None and part.proc.pid != first.pid
    assert "sleeper killed by SIGKILL; restarting it in 0.1 s" in said
    state = json.loads((running.data_dir / "launcher.json").read_text())
    assert state["parts"]["sleeper"]["restarts"] == 1 and state["parts"]["sleeper"]["pid"] == part.proc.pid


def test_a_crash_loop_is_given_up_on_and_named_while_the_rest_runs(
    quick: None, sup: tuple[Supervisor, list[str]]
) -> None:
    running, said = sup
    broken = running.add(Part("broken", [sys.executable, "-c", "raise SystemExit(3)"], stage=0))
    fine = running.add(Part("fine", ["sleep", "60"], stage=0))
    running.start(broken)
    running.start(fine)
    poll_until(running, lambda: broken.state == "given up")
    assert broken.restarts == 2 and fine.state == "running" and running.given_up() == [broken]
    assert any(
        "broken exited with status 3 (3 exits in 30 s): giving up" in line and "giving up on it" in line
        for line in said
    )
    # The backoff doubled between the attempts.
    assert [line for line in said if "restarting it in" in line] == [
        "broken exited with status 3; restarting it in 0.1 s",
        "broken exited with status 3; restarting it in 0.2 s",
    ]


def test_health_sees_the_part_given_up(quick: None, sup: tuple[Supervisor, list[str]]) -> None:
    running, _ = sup
    assert supervised_processes(running.data_dir) is None  # nothing saved yet
    broken = running.add(Part("broken", ["false"], stage=0))
    running.start(broken)
    poll_until(running, lambda: broken.state == "given up")
    seen = supervised_processes(running.data_dir)
    assert seen is not None and seen["ok"] is False and seen["given_up"] == ["broken"]
    assert seen["parts"]["broken"]["last_exit"] == "exited with status 1"


def test_stop_goes_stage_by_stage(tmp_path: Path, sup: tuple[Supervisor, list[str]]) -> None:
    running, _ = sup
    record = tmp_path / "stopped"
    script = textwrap.dedent(
        """
        import signal, sys, time
        def stop(*_):
            time.sleep(0.3)  # a stage ends only when all of it has stopped
            open(sys.argv[2], "a").write(sys.argv[1] + "\\n")
            raise SystemExit(0)
        signal.signal(signal.SIGTERM, stop)
        open(sys.argv[2] + ".ready", "a").write(sys.argv[1] + "\\n")
        while True:
            time.sleep(1)
        """
    )
    for name, stage in (("agent", 2), ("web", 0), ("hostwatch", 1), ("worker", 0)):
        running.start(running.add(Part(name, [sys.executable, "-c", script, name, str(record)], stage=stage)))
    ready = Path(f"{record}.ready")
    poll_until(running, lambda: ready.exists() and len(ready.read_text().split()) == 4)
    running.stop()
    order = record.read_text().split()
    assert set(order[:2]) == {"web", "worker"} and order[2:] == ["hostwatch", "agent"]
    assert not (running.data_dir / "launcher.json").exists()


def test_a_part_that_ignores_sigterm_is_killed_after_its_timeout(sup: tuple[Supervisor, list[str]]) -> None:
    running, said = sup
    stubborn = running.add(
        Part("stubborn", ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"], stage=0, stop_timeout=0.5)
    )
    running.start(stubborn)
    time.sleep(0.3)
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 5
    assert stubborn.proc is not None and stubborn.proc.poll() is not None
    assert "stubborn did not stop in time; killing it" in said


def test_a_second_launcher_on_the_same_data_is_refused(
    tmp_path: Path, sup: tuple[Supervisor, list[str]]
) -> None:
    running, _ = sup
    running.save()
    with pytest.raises(
        AlreadyRunning, match=f"already running from {tmp_path} \\(launcher pid {os.getpid()}\\)"
    ):
        Supervisor(tmp_path, cwd=tmp_path, log=print).acquire()


def test_what_a_killed_launcher_left_is_stopped_before_anything_starts(tmp_path: Path) -> None:
    """Its lock is free (the kernel released it with the process) and its record names processes
    still alive: stopped, also one that was stopped (SIGSTOP) and so could not act on SIGTERM."""
    left = subprocess.Popen(["sleep", "300"], start_new_session=True)
    paused = subprocess.Popen(["sleep", "300"], start_new_session=True)
    os.kill(paused.pid, signal.SIGSTOP)
    reused = subprocess.Popen(["sleep", "300"], start_new_session=True)  # its pid, another process
    parts = {
        "web": {"pid": left.pid, "start_time": process_start_time(left.pid)},
        "worker": {"pid": paused.pid, "start_time": process_start_time(paused.pid)},
        "agent": {"pid": reused.pid, "start_time": 1},  # not the process that was recorded
    }
    (tmp_path / "launcher.json").write_text(json.dumps({"launcher": {"pid": 999999}, "parts": parts}))
    said: list[str] = []
    try:
        Supervisor(tmp_path, cwd=tmp_path, log=said.append).acquire()
        assert left.wait(5) is not None and paused.wait(5) is not None
        assert reused.poll() is None  # never signal a pid that now belongs to someone else
        assert said == [
            f"a launcher (pid 999999) was killed and left web (pid {left.pid}), worker (pid {paused.pid}) "
            "running; stopping them"
        ]
    finally:
        for proc in (left, paused, reused):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_children_die_with_a_launcher_killed_with_sigkill(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from console.supervisor import Part, Supervisor
        sup = Supervisor(Path({str(tmp_path)!r}), cwd=Path({str(tmp_path)!r}), log=print)
        sup.acquire()
        sup.start(sup.add(Part("child", ["sleep", "300"], stage=0)))
        print(sup.parts[0].proc.pid, flush=True)
        time.sleep(300)
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    child = int(launcher.stdout.readline())
    assert process_start_time(child) is not None
    launcher.kill()
    launcher.wait(5)
    deadline = time.monotonic() + 5
    while process_start_time(child) is not None:
        assert time.monotonic() < deadline, "the child outlived its launcher"
        time.sleep(0.05)
