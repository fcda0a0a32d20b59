from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from console.access.models import TOKEN_PREFIX_LENGTH, ApiToken, hash_key
from console.access.permissions import PERMISSIONS
from console.audit.services import Origin, audit_record
from console.errors import InvalidInput


@transaction.atomic
def api_token_issue(
    *,
    user: User,
    name: str = "cli",
    expires_at: datetime | None = None,
    read_only: bool = False,
    permissions: list[str] | None = None,
    origin: Origin | None = None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its key, which is not stored and cannot be shown again.
    `permissions` narrows what the token may do to a subset of its user's permissions."""
    errors: dict[str, list[str]] = {}
    if not name.strip() or len(name) > 100:
        errors["name"] = ["1 to 100 characters"]
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["must be in the future"]
    unknown = sorted(set(permissions or []) - set(PERMISSIONS))
    if unknown:
        errors["permissions"] = [f"unknown permission(s): {', '.join(unknown)}"]
    if errors:
        raise InvalidInput("Invalid token.", fields=errors)
    key = ApiToken.new_key()
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=key[:TOKEN_PREFIX_LENGTH],
        key_hash=hash_key(key),
        expires_at=expires_at,
        read_only=read_only,
        permissions=sorted(set(permissions or [])),
    )
    changes: dict[str, Any] = {
        "name": name,
        "prefix": token.prefix,
        "expires_at": expires_at.isoformat() if expires_at else None,
        "read_only": read_only,
        "permissions": token.permissions,
    }
    audit_record(action="token.issue", actor=user, origin=origin, obj=token, changes=changes)
    return token, key


@transaction.atomic
def api_token_revoke(*, token: ApiToken, actor: Any, origin: Origin | None = None) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            action="token.revoke", actor=actor, origin=origin, obj=token, changes={"prefix": token.prefix}
        )
    return token
