"""First-run set-up of a single-machine console: the admin user and the local host."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.db import transaction

from hosts.models import Host
from hosts.services import host_register


@transaction.atomic
def admin_ensure(*, password: str | None) -> str | None:
    """Create `admin` if missing; set its password when given. Returns a generated password
    (only when it had to make one up), which the caller prints once."""
    users = get_user_model()
    user = users.objects.filter(username="admin").first()
    generated = None
    if user is None:
        generated = None if password else secrets.token_urlsafe(12)
        user = users.objects.create_superuser("admin", "", password or generated)
    elif password:
        user.set_password(password)
        user.save(update_fields=["password"])
    return generated


def local_host_ensure(*, url: str, secret: str) -> Host:
    return host_register(name="local", url=url, secret=secret)
