"""The one access layer: every page, API view, WebSocket consumer, job and selector asks here.

Walking-skeleton policy: every active, authenticated user may do everything. Teams, roles and
grants (issue 3) replace the body of these two functions, not their callers.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Model, QuerySet

M = TypeVar("M", bound=Model)


def has_perm(user: Any, action: str, obj: Model | None = None) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def restrict(queryset: QuerySet[M], user: Any, action: str) -> QuerySet[M]:
    if not has_perm(user, action):
        return queryset.none()
    return queryset
