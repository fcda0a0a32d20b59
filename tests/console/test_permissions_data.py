from __future__ import annotations

import pytest

from console.access.models import Role
from console.access.permissions import BUILTIN_ROLES, PERMISSIONS

pytestmark = pytest.mark.django_db


def test_builtin_roles_in_the_database_match_the_code() -> None:
    """The migration froze the built-in roles; a change to one side needs the other."""
    stored = {r.name: sorted(r.permissions) for r in Role.objects.filter(builtin=True)}
    assert stored == {name: sorted(perms) for name, perms in BUILTIN_ROLES.items()}


def test_roles_only_name_known_permissions() -> None:
    for perms in BUILTIN_ROLES.values():
        assert set(perms) <= set(PERMISSIONS)
