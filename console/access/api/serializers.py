from __future__ import annotations

import dataclasses
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from console.access.models import ApiToken, Grant, Role, Team
from console.access.permissions import PERMISSIONS
from console.access.quotas import team_usage
from console.access.services import MAX_QUOTA
from console.params import MAX_ID


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
    expiry_capped = serializers.BooleanField(
        read_only=True,
        help_text="true when the expiry asked for (or its absence) was later than the expiry of the "
        "token the request was made with: the new token expires with it (expires_at)",
    )

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "key", "expiry_capped"]
        read_only_fields = fields


class TeamUsageSerializer(serializers.Serializer[Any]):
    domains = serializers.IntegerField()
    vcpus = serializers.IntegerField()
    memory_mib = serializers.IntegerField()
    disk_gib = serializers.FloatField(help_text="the disks whose size the console knows")
    disks_of_unknown_size = serializers.IntegerField(
        help_text="existing volumes used as is, and the disks of domains found on a host"
    )


class TeamMemberSerializer(serializers.Serializer[Any]):
    user = serializers.CharField()
    role = serializers.CharField()


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

    @extend_schema_field(TeamUsageSerializer)
    def get_usage(self, team: Team) -> dict[str, float]:
        return dataclasses.asdict(team_usage(team))

    @extend_schema_field(TeamMemberSerializer(many=True))
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


# Request bodies, as the schema documents them. The views check what they receive themselves,
# naming unknown fields (which a serializer would drop), through the services.


def _quota() -> serializers.IntegerField:
    return serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=MAX_QUOTA, help_text="null: no limit"
    )


class TeamQuotasSerializer(serializers.Serializer[Any]):
    max_domains = _quota()
    max_vcpus = _quota()
    max_memory_mib = _quota()
    max_disk_gib = _quota()


class TeamCreateSerializer(TeamQuotasSerializer):
    name = serializers.CharField(max_length=100)


class MembershipSetSerializer(serializers.Serializer[Any]):
    user = serializers.CharField(help_text="a username")
    role = serializers.CharField(help_text="a role's name")


class GrantCreateSerializer(serializers.Serializer[Any]):
    user = serializers.CharField(help_text="a username")
    role = serializers.CharField(help_text="a role's name")
    scope = serializers.ChoiceField(choices=[s.value for s in Grant.Scope], default="site")
    team = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID, help_text="scope team")
    host = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID, help_text="scope host")
    domain = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID, help_text="scope domain")


class RoleCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=64)
    permissions = serializers.ListField(
        child=serializers.ChoiceField(choices=list(PERMISSIONS)), min_length=1
    )
    description = serializers.CharField(max_length=255, required=False, allow_blank=True)


class WhySerializer(serializers.Serializer[Any]):
    action = serializers.CharField()
    allowed = serializers.BooleanField()
    reason = serializers.CharField(help_text="what is missing, when not allowed")
