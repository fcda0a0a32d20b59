from __future__ import annotations

from typing import Any

from rest_framework import serializers

from domains.models import Domain


class DomainSerializer(serializers.ModelSerializer[Domain]):
    state_label = serializers.CharField(source="get_state_display", read_only=True)

    class Meta:
        model = Domain
        fields = [
            "id",
            "uuid",
            "name",
            "host",
            "team",
            "vcpus",
            "memory_mib",
            "state",
            "state_label",
            "autostart",
            "spec",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class DiskInputSerializer(serializers.Serializer[Any]):
    size_gib = serializers.FloatField()


class BootInputSerializer(serializers.Serializer[Any]):
    iso = serializers.CharField(required=False)
    kernel = serializers.CharField(required=False)
    initrd = serializers.CharField(required=False)
    cmdline = serializers.CharField(required=False)


class DomainCreateSerializer(serializers.Serializer[Any]):
    """Documents the create body; the spec itself is validated by `agent.protocol.DomainSpec`."""

    name = serializers.CharField()
    host = serializers.IntegerField()
    team = serializers.IntegerField(required=False, help_text="Defaults to your only team")
    vcpus = serializers.IntegerField(required=False)
    memory_mib = serializers.IntegerField(required=False)
    disks = DiskInputSerializer(many=True, required=False)
    boot = BootInputSerializer()
    start = serializers.BooleanField(required=False, default=False)


class ConsoleTicketRequestSerializer(serializers.Serializer[Any]):
    kind = serializers.CharField(default="serial")


class ConsoleTicketSerializer(serializers.Serializer[Any]):
    ticket = serializers.CharField()
    url = serializers.CharField()
    expires_at = serializers.DateTimeField()


class AutostartSerializer(serializers.Serializer[Any]):
    enabled = serializers.BooleanField()
