"""A pytest plugin (`-p tests.parallel`) for the quick tier's parallel run (pytest-xdist).

Each worker is a console of its own in the shared Redis: its channel-layer groups, job queue and
locks are named after DOMUS_INSTANCE, which the settings read once, when Django is set up. So it
is set here, when the plugin is imported: before pytest-django sets Django up, and in each worker
before its own settings are read (xdist names the worker in the environment first)."""

from __future__ import annotations

import os

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and not os.environ.get("DOMUS_INSTANCE"):
    os.environ["DOMUS_INSTANCE"] = f"test-{os.getpid()}-{_worker}"
