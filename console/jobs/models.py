from __future__ import annotations

from django.conf import settings
from django.db import models


class Job(models.Model):
    """One piece of work against a host, run by a Celery task and followed live in the browser."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    kind = models.CharField(max_length=64)  # e.g. domain.start
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)  # percent
    step = models.CharField(max_length=255, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    host = models.ForeignKey(
        "hosts.Host", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    domain = models.ForeignKey(
        "domains.Domain", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    target_name = models.CharField(max_length=255, blank=True)  # survives the domain's deletion
    attempts = models.PositiveSmallIntegerField(default=0)
    # A worker vouches for the job until then (runner.LeaseKeeper renews it while a handler runs);
    # for a queued job, when to send its message again if no worker has picked it up. Past it,
    # a worker's sweeper retries the job (console/jobs/leases.py).
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When its message went to the broker; None while the outbox relay still has to send it
    # (console/jobs/dispatch.py).
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # Someone asked a running, cancellable job to stop; its handler checks at safe points.
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["domain", "status"]),
            models.Index(fields=["status", "lease_expires_at"], name="job_status_lease"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED, self.Status.CANCELLED)
