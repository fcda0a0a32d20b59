from __future__ import annotations

from typing import Any

from rest_framework import serializers

from console.jobs.models import Job


class JobSerializer(serializers.ModelSerializer[Job]):
    actor: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "status",
            "progress",
            "step",
            "log",
            "error",
            "result",
            "params",
            "actor",
            "host",
            "domain",
            "target_name",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields
