from __future__ import annotations

from django.utils import timezone

from console.access.models import ApiToken, hash_key


def api_token_resolve(key: str) -> ApiToken | None:
    """The live token with this key (its user active), recording its use; None otherwise."""
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_key(key), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token
