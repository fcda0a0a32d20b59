from __future__ import annotations

from typing import Any

from rest_framework import serializers

from agent.protocol import format_fingerprint
from hosts.models import Host


class HostSerializer(serializers.ModelSerializer[Host]):
    fingerprint = serializers.SerializerMethodField()
    capabilities = serializers.SerializerMethodField()
    resources = serializers.SerializerMethodField()

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "url",
            "uses_tls",
            "fingerprint",
            "state",
            "state_detail",
            "maintenance",
            "maintenance_reason",
            "last_seen_at",
            "facts",
            "capabilities",
            "resources",
            "stats",
            "stats_at",
            "created_at",
        ]
        read_only_fields = fields

    def get_fingerprint(self, host: Host) -> str:
        return format_fingerprint(host.fingerprint) if host.fingerprint else ""

    def get_capabilities(self, host: Host) -> dict[str, Any] | None:
        caps = host.facts.get("capabilities")
        return dict(caps) if caps else None

    def get_resources(self, host: Host) -> dict[str, Any] | None:
        resources = host.facts.get("resources")
        return self._visible(host, dict(resources)) if resources else None

    def _visible(self, host: Host, resources: dict[str, Any]) -> dict[str, Any] | None:
        """Without the volumes of teams the caller cannot see (domains.volumes)."""
        from domains.volumes import visible_resources

        request = self.context.get("request")
        return visible_resources(getattr(request, "user", None), host, resources)

    def to_representation(self, instance: Host) -> dict[str, Any]:
        data = super().to_representation(instance)
        facts = data.get("facts")
        if isinstance(facts, dict) and isinstance(facts.get("resources"), dict):
            data["facts"] = {**facts, "resources": data.get("resources")}  # the same, filtered
        return data


class HostAddSerializer(serializers.Serializer[Any]):
    """Either a pairing code (TLS agents, the normal case) or a fixed secret (loopback agents)."""

    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", max_length=63)
    url = serializers.URLField(max_length=255)
    pairing_code = serializers.CharField(required=False, max_length=32)
    fingerprint = serializers.CharField(required=False, allow_blank=True, max_length=120)
    secret = serializers.CharField(required=False, write_only=True, min_length=16, max_length=256)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("pairing_code")) == bool(attrs.get("secret")):
            raise serializers.ValidationError(
                {
                    "pairing_code": "give the pairing code `domus-agent init` printed (or, for a "
                    "loopback agent without TLS, its fixed secret instead)"
                }
            )
        return attrs


class MaintenanceSerializer(serializers.Serializer[Any]):
    maintenance = serializers.BooleanField()
    reason = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")
