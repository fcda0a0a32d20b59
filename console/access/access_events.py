"""Any change to who may see what publishes an "access.changed" event, so that open event
sockets recompute their users' reach at once (console.realtime.consumers.ReachCache).

Signals rather than calls in each service: the Django admin and the shell change these rows too.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import m2m_changed, post_delete, post_save

from console.access.models import ApiToken, Grant, Membership, Role, Team
from console.realtime.events import ACCESS_CHANGED, ACCESS_GROUP, SESSION_ENDED, publish_on_commit


def _changed(sender: Any, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # a sign-in, not an access change
    if str(kwargs.get("action", "")).startswith("pre_"):
        return  # m2m_changed fires before and after: once (after) is enough
    publish_on_commit({"type": ACCESS_CHANGED})
    publish_on_commit({"type": ACCESS_CHANGED}, ACCESS_GROUP)  # open consoles check again


def _signed_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """A sign-out ends the sockets that session opened: consoles and event sockets."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        publish_on_commit({"type": SESSION_ENDED, "session": session_key}, ACCESS_GROUP)
        publish_on_commit({"type": SESSION_ENDED, "session": session_key})


def connect() -> None:
    from hosts.models import Host

    user_logged_out.connect(_signed_out, dispatch_uid="access-signed-out")
    for model in (Grant, Membership, Role, Team, ApiToken, get_user_model()):
        post_save.connect(_changed, sender=model, dispatch_uid=f"access-changed-save-{model.__name__}")
        post_delete.connect(_changed, sender=model, dispatch_uid=f"access-changed-delete-{model.__name__}")
    m2m_changed.connect(_changed, sender=Host.teams.through, dispatch_uid="access-changed-host-teams")
