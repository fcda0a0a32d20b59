from __future__ import annotations

from rest_framework import serializers

from console.audit.models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    actor = serializers.CharField(source="actor_name", read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "created_at",
            "actor",
            "token_prefix",
            "ip",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "changes",
            "outcome",
            "detail",
            "prev_hash",
            "hash",
        ]
        read_only_fields = fields
