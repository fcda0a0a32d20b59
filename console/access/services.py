from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from console.access.models import TOKEN_PREFIX_LENGTH, ApiToken, Grant, Membership, Role, Team, hash_key
from console.access.permissions import NOT_FROM_TEAMS, PERMISSIONS
from console.access.policy import explain, has_perm, has_site_perm
from console.audit.services import Origin, audit_record
from console.errors import InvalidInput, PermissionDenied
from domains.models import Domain
from hosts.models import Host


def _within_parent(
    parent: ApiToken, *, expires_at: datetime | None, read_only: bool, permissions: list[str]
) -> datetime | None:
    """The expiry a token issued by a request authenticated with `parent` gets: never later than
    the parent's (asking for a later one, or for none, gets the parent's). Raises
    PermissionDenied when it asks for more than the parent may do."""
    if parent.permissions and not (permissions and set(permissions) <= set(parent.permissions)):
        raise PermissionDenied(
            "A token limited to some permissions can only issue tokens limited to them "
            f"({', '.join(parent.permissions)})."
        )
    if parent.read_only and not read_only:
        raise PermissionDenied("A read-only token can only issue read-only tokens.")
    if parent.expires_at is not None and (expires_at is None or expires_at > parent.expires_at):
        return parent.expires_at
    return expires_at


@transaction.atomic
def api_token_issue(
    *,
    user: User,
    name: str = "cli",
    expires_at: datetime | None = None,
    read_only: bool = False,
    permissions: list[str] | None = None,
    parent: ApiToken | None = None,
    origin: Origin | None = None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its key, which is not stored and cannot be shown again.
    `permissions` narrows what the token may do to a subset of its user's permissions.

    `parent` is the token the request asking for this one was authenticated with (None for a
    signed-in person). A child never outlives nor outdoes its parent: its expiry is capped at the
    parent's (one asking for a later expiry, or for none, gets the parent's, so the caller tells
    that the cap applied by `token.expires_at != expires_at`), and it may do at most what the
    parent may (PermissionDenied otherwise)."""
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
    granted = expires_at
    if parent is not None:
        granted = _within_parent(
            parent, expires_at=expires_at, read_only=read_only, permissions=list(permissions or [])
        )
    key = ApiToken.new_key()
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=key[:TOKEN_PREFIX_LENGTH],
        key_hash=hash_key(key),
        expires_at=granted,
        read_only=read_only,
        permissions=sorted(set(permissions or [])),
    )
    changes: dict[str, Any] = {
        "name": name,
        "prefix": token.prefix,
        "expires_at": granted.isoformat() if granted else None,
        "read_only": read_only,
        "permissions": token.permissions,
    }
    if parent is not None:
        changes["issued_by_token"] = parent.prefix
        if granted != expires_at:
            changes["expires_at_asked"] = expires_at.isoformat() if expires_at else None
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


def _require(actor: Any, action: str, obj: Any = None, *, site: bool = False) -> None:
    allowed = has_site_perm(actor, action) if site or obj is None else has_perm(actor, action, obj)
    if not allowed:
        raise PermissionDenied(explain(actor, action, None if site else obj))


def _no_escalation(actor: Any, role: Role, scope_obj: Any) -> None:
    """A grantor can only hand out permissions they hold on that scope themselves."""
    for permission in role.permissions:
        if permission in NOT_FROM_TEAMS and isinstance(scope_obj, Team | Domain):
            continue  # confers nothing on such a scope (see access.policy), so gives nothing away
        held = (
            has_site_perm(actor, permission) if scope_obj is None else has_perm(actor, permission, scope_obj)
        )
        if not held:
            raise PermissionDenied(
                f"You cannot give {role.name!r}: you do not hold {permission!r} there yourself."
            )


@transaction.atomic
def team_create(
    *, actor: Any, name: str, quotas: dict[str, int | None] | None = None, origin: Origin | None = None
) -> Team:
    _require(actor, "team.manage", site=True)
    if not name.strip() or len(name) > 100:
        raise InvalidInput("Invalid team.", fields={"name": ["1 to 100 characters"]})
    if Team.objects.filter(name=name).exists():
        raise InvalidInput("Name taken.", fields={"name": [f"a team named {name!r} exists"]})
    team = Team.objects.create(name=name, **_quota_fields(quotas or {}))
    audit_record(action="team.create", actor=actor, origin=origin, obj=team, changes={"quotas": quotas or {}})
    return team


QUOTA_FIELDS = ("max_domains", "max_vcpus", "max_memory_mib", "max_disk_gib")
MAX_QUOTA = 2**31 - 1  # what the quota columns hold (PositiveIntegerField) on every database


def _quota_fields(quotas: dict[str, Any]) -> dict[str, int | None]:
    unknown = set(quotas) - set(QUOTA_FIELDS)
    if unknown:
        raise InvalidInput("Unknown quota.", fields={k: ["unknown quota"] for k in sorted(unknown)})
    bad = {
        k: [f"a whole number from 0 to {MAX_QUOTA}, or null for no limit"]
        for k, v in quotas.items()
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_QUOTA)
    }
    if bad:
        raise InvalidInput("Invalid quota.", fields=bad)
    return dict(quotas)


@transaction.atomic
def team_set_quotas(*, actor: Any, team: Team, quotas: dict[str, Any], origin: Origin | None = None) -> Team:
    """Quotas are the site's to set: a team's own admins cannot raise them."""
    _require(actor, "team.manage", site=True)
    changes = _quota_fields(quotas)
    before = {k: getattr(team, k) for k in changes}
    for key, value in changes.items():
        setattr(team, key, value)
    team.save(update_fields=list(changes))
    audit_record(
        action="team.quotas",
        actor=actor,
        origin=origin,
        obj=team,
        changes={"before": before, "after": changes},
    )
    return team


@transaction.atomic
def membership_set(
    *, actor: Any, team: Team, user: User, role: Role, origin: Origin | None = None
) -> Membership:
    _require(actor, "team.manage", team)
    _no_escalation(actor, role, team)
    membership, created = Membership.objects.update_or_create(user=user, team=team, defaults={"role": role})
    audit_record(
        action="team.member_set",
        actor=actor,
        origin=origin,
        obj=team,
        changes={"user": user.get_username(), "role": role.name, "new": created},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: Any, team: Team, user: User, origin: Origin | None = None) -> None:
    _require(actor, "team.manage", team)
    deleted, _ = Membership.objects.filter(team=team, user=user).delete()
    if deleted:
        audit_record(
            action="team.member_remove",
            actor=actor,
            origin=origin,
            obj=team,
            changes={"user": user.get_username()},
        )


@transaction.atomic
def role_create(
    *, actor: Any, name: str, permissions: list[str], description: str = "", origin: Origin | None = None
) -> Role:
    _require(actor, "team.manage", site=True)
    errors: dict[str, list[str]] = {}
    if not name.strip() or len(name) > 64:
        errors["name"] = ["1 to 64 characters"]
    elif Role.objects.filter(name=name).exists():
        errors["name"] = [f"a role named {name!r} exists"]
    if len(description) > 255:
        errors["description"] = ["at most 255 characters"]
    if not all(isinstance(p, str) for p in permissions):
        raise InvalidInput("Invalid role.", fields={**errors, "permissions": ["a list of permission names"]})
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown or not permissions:
        errors["permissions"] = [f"unknown: {', '.join(unknown)}" if unknown else "at least one permission"]
    if errors:
        raise InvalidInput("Invalid role.", fields=errors)
    role = Role.objects.create(name=name, permissions=sorted(set(permissions)), description=description)
    audit_record(
        action="role.create", actor=actor, origin=origin, obj=role, changes={"permissions": role.permissions}
    )
    return role


@transaction.atomic
def grant_create(
    *,
    actor: Any,
    user: User,
    role: Role,
    scope_obj: Team | Host | Domain | None,
    origin: Origin | None = None,
) -> Grant:
    """Give `user` `role` on `scope_obj` (None: the site). Granting needs team.manage there
    (site-wide for the site and for hosts), and only permissions the grantor holds there."""
    if scope_obj is None or isinstance(scope_obj, Host):
        _require(actor, "team.manage", site=True)
    else:
        _require(actor, "team.manage", scope_obj)
    _no_escalation(actor, role, scope_obj)
    scope = Grant.Scope.SITE if scope_obj is None else Grant.Scope(type(scope_obj).__name__.lower())
    target = {} if scope_obj is None else {scope.value: scope_obj}
    grant = Grant.objects.create(user=user, role=role, scope=scope, **target)
    audit_record(
        action="grant.create",
        actor=actor,
        origin=origin,
        obj=grant,
        changes={
            "user": user.get_username(),
            "role": role.name,
            "scope": scope.value,
            "target": str(scope_obj or "site"),
        },
    )
    return grant


@transaction.atomic
def grant_delete(*, actor: Any, grant: Grant, origin: Origin | None = None) -> None:
    scope_obj = grant.team or grant.host or grant.domain
    if scope_obj is None or isinstance(scope_obj, Host):
        _require(actor, "team.manage", site=True)
    else:
        _require(actor, "team.manage", scope_obj)
    audit_record(action="grant.delete", actor=actor, origin=origin, obj=grant, changes={"grant": str(grant)})
    grant.delete()
