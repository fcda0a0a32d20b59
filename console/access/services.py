from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction

from console.access.models import TOKEN_PREFIX_LENGTH, ApiToken, hash_key


@transaction.atomic
def api_token_issue(*, user: User, name: str = "cli") -> tuple[ApiToken, str]:
    """Create a token and return it with its key, which is not stored and cannot be shown again."""
    key = ApiToken.new_key()
    token = ApiToken.objects.create(
        user=user, name=name, prefix=key[:TOKEN_PREFIX_LENGTH], key_hash=hash_key(key)
    )
    return token, key
