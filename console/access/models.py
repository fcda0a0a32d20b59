from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

TOKEN_PREFIX_LENGTH = 8


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A user's API token. Only its hash is stored; the key is shown once when issued."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=TOKEN_PREFIX_LENGTH)  # lets a person tell tokens apart
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    read_only = models.BooleanField(default=False)
    # A subset of the user's permissions this token may use; empty: all of them.
    permissions = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def new_key() -> str:
        return secrets.token_urlsafe(32)


class Team(models.Model):
    """A group of people owning domains. Quotas bound what its domains may use (None: no limit)."""

    name = models.CharField(max_length=100, unique=True)
    max_domains = models.PositiveIntegerField(null=True, blank=True)
    max_vcpus = models.PositiveIntegerField(null=True, blank=True)
    max_memory_mib = models.PositiveIntegerField(null=True, blank=True)
    max_disk_gib = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.Model):
    """A named set of permissions (see console.access.permissions). Built-in roles are made by a
    migration and cannot be changed; custom roles are any subset of the permissions."""

    name = models.CharField(max_length=64, unique=True)
    permissions = models.JSONField(default=list)
    builtin = models.BooleanField(default=False)
    description = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user in a team, with a role that applies to everything the team owns."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.ForeignKey(Role, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} as {self.role}"


class Grant(models.Model):
    """A role given to a user on a scope: the whole site, a team, a host or one domain."""

    class Scope(models.TextChoices):
        SITE = "site", "Site"
        TEAM = "team", "Team"
        HOST = "host", "Host"
        DOMAIN = "domain", "Domain"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="grants")
    role = models.ForeignKey(Role, on_delete=models.PROTECT, related_name="+")
    scope = models.CharField(max_length=8, choices=Scope.choices)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    host = models.ForeignKey("hosts.Host", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    domain = models.ForeignKey(
        "domains.Domain", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                name="grant_scope_matches_target",
                condition=(
                    models.Q(scope="site", team__isnull=True, host__isnull=True, domain__isnull=True)
                    | models.Q(scope="team", team__isnull=False, host__isnull=True, domain__isnull=True)
                    | models.Q(scope="host", team__isnull=True, host__isnull=False, domain__isnull=True)
                    | models.Q(scope="domain", team__isnull=True, host__isnull=True, domain__isnull=False)
                ),
            )
        ]

    def __str__(self) -> str:
        target = self.team or self.host or self.domain or "the site"
        return f"{self.role} on {self.scope} {target} for {self.user}"
