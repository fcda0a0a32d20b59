from __future__ import annotations

from typing import Any

from rest_framework import serializers

from console.jobs.models import Job
from console.jobs.registry import can_cancel


class JobSerializer(serializers.ModelSerializer[Job]):
    actor: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    cancellable = serializers.SerializerMethodField(
        help_text="Whether cancelling it now can work: queued, or running and able to stop half-way."
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
            "cancel_requested",
            "cancellable",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_cancellable(self, job: Job) -> bool:
        return can_cancel(job)
