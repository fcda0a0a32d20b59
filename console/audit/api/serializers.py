from __future__ import annotations

from rest_framework import serializers

from console.audit.export import COLUMNS
from console.audit.models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    actor = serializers.CharField(source="actor_name", read_only=True)

    class Meta:
        model = AuditEvent
        fields = list(COLUMNS)  # the export's columns: one list for both
        read_only_fields = fields
