"""Sign-in upkeep (run by the scheduler, console/jobs/periodic.py)."""

from __future__ import annotations

from importlib import import_module

from django.conf import settings

from console.jobs.periodic import periodic


@periodic("sessions: clear the expired", every=6 * 3600.0)
def sessions_clear_expired() -> None:
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
