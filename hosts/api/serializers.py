from __future__ import annotations

from rest_framework import serializers

from hosts.models import Host


class HostSerializer(serializers.ModelSerializer[Host]):
    secret = serializers.CharField(write_only=True, min_length=16, max_length=128)

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "url",
            "secret",
            "state",
            "state_detail",
            "last_seen_at",
            "facts",
            "created_at",
        ]
        read_only_fields = ["state", "state_detail", "last_seen_at", "facts", "created_at"]
