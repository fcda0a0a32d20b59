from __future__ import annotations

import dataclasses
from typing import Any

from rest_framework import serializers

from console.access.models import ApiToken, Grant, Role, Team
from console.access.quotas import team_usage


class ApiTokenSerializer(serializers.ModelSerializer[ApiToken]):
    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "created_at",
            "expires_at",
            "read_only",
            "permissions",
            "last_used_at",
            "last_used_ip",
            "revoked_at",
        ]
        read_only_fields = fields


class ApiTokenCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    read_only = serializers.BooleanField(required=False, default=False)  # type: ignore[assignment]
    permissions = serializers.ListField(child=serializers.CharField(), required=False, default=list)


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    key = serializers.CharField(read_only=True, help_text="Shown once; only its hash is kept")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "key"]
        read_only_fields = fields


class TeamSerializer(serializers.ModelSerializer[Team]):
    usage = serializers.SerializerMethodField()
    members = serializers.SerializerMethodField()

    class Meta:
        model = Team
        fields = [
            "id",
            "name",
            "max_domains",
            "max_vcpus",
            "max_memory_mib",
            "max_disk_gib",
            "usage",
            "members",
        ]
        read_only_fields = fields

    def get_usage(self, team: Team) -> dict[str, float]:
        return dataclasses.asdict(team_usage(team))

    def get_members(self, team: Team) -> list[dict[str, str]]:
        rows = team.memberships.select_related("user", "role").order_by("user__username")
        return [{"user": m.user.get_username(), "role": m.role.name} for m in rows]


class RoleSerializer(serializers.ModelSerializer[Role]):
    class Meta:
        model = Role
        fields = ["id", "name", "permissions", "builtin", "description"]
        read_only_fields = ["builtin"]


class GrantSerializer(serializers.ModelSerializer[Grant]):
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)  # type: ignore[var-annotated]
    role = serializers.SlugRelatedField(slug_field="name", read_only=True)  # type: ignore[var-annotated]

    class Meta:
        model = Grant
        fields = ["id", "user", "role", "scope", "team", "host", "domain", "created_at"]
        read_only_fields = fields
