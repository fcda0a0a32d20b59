"""Periodic housekeeping, run by the scheduler (`manage.py scheduler`: a role of the console
image, and a part of `make run`).

Apps register what must happen regularly with `@periodic(name, every=seconds)`: the job sweeper
and the outbox relay (which each worker runs as well: a lost job is recovered even while the
scheduler is down), the audit trail's retention, expired sessions, spent console tickets. Every
task is idempotent and bounded (it deletes by age, or updates rows conditionally), so two
schedulers, or a scheduler restarted mid-pass, do no harm. A task that fails (the database away)
is logged and tried at its next time; it never stops the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import DatabaseError, connections

logger = logging.getLogger(__name__)


@dataclass
class PeriodicTask:
    name: str
    every: Callable[[], float]  # seconds; read each time, so that settings in tests apply
    run: Callable[[], object]
    next_run: float = 0.0


TASKS: dict[str, PeriodicTask] = {}


def periodic(
    name: str, *, every: float | Callable[[], float]
) -> Callable[[Callable[[], object]], Callable[[], object]]:
    interval = every if callable(every) else (lambda: float(every))

    def register(fn: Callable[[], object]) -> Callable[[], object]:
        TASKS[name] = PeriodicTask(name=name, every=interval, run=fn)
        return fn

    return register


def run_due(now: float | None = None) -> list[str]:
    """Run every task whose time has come (each at once on the first call); their names."""
    now = time.monotonic() if now is None else now
    ran = []
    for task in TASKS.values():
        if now < task.next_run:
            continue
        task.next_run = now + task.every()
        try:
            result = task.run()
        except DatabaseError as exc:
            logger.warning("%s: %s; trying again at its next time", task.name, exc)
        except Exception:
            logger.exception("%s failed; trying again at its next time", task.name)
        else:
            if result:
                logger.info("%s: %s", task.name, result)
        finally:
            connections.close_all()
        ran.append(task.name)
    return ran


def run_forever(stop: threading.Event, tick: float = 0.5) -> None:
    logger.info("scheduler started: %s", ", ".join(TASKS))
    while not stop.is_set():
        run_due()
        stop.wait(tick)
