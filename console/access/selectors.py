from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from console.access.models import ApiToken, Team, hash_key
from console.access.policy import restrict


def api_token_resolve(key: str, *, ip: str | None = None) -> ApiToken | None:
    """The live token with this key (not revoked, not expired, its user active), recording its
    use; None otherwise. Its user carries the token's permission limit for the access layer."""
    now = timezone.now()
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_key(key), revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=now, last_used_ip=ip)
    if token.permissions:
        setattr(token.user, "_domus_token_permissions", frozenset(token.permissions))  # noqa: B010 - see access.policy
    return token


def team_list(*, user: Any, action: str = "domain.view") -> QuerySet[Team]:
    return restrict(Team.objects.all(), user, action)
