from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Domain(models.Model):
    """A virtual machine on a host. `state` caches what the host's agent last reported."""

    class State(models.TextChoices):
        NEW = "new", "Being defined"
        RUNNING = "running", "Running"
        BLOCKED = "blocked", "Blocked"
        PAUSED = "paused", "Paused"
        SHUTDOWN = "shutdown", "Shutting down"
        SHUTOFF = "shutoff", "Shut off"
        CRASHED = "crashed", "Crashed"
        PMSUSPENDED = "pmsuspended", "Suspended"
        NOSTATE = "nostate", "No state"
        MISSING = "missing", "Missing on host"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=63)
    host = models.ForeignKey("hosts.Host", on_delete=models.PROTECT, related_name="domains")
    # The owning team; None for domains only a site-wide role reaches (found behind Domus's back).
    team = models.ForeignKey(
        "access.Team", null=True, blank=True, on_delete=models.PROTECT, related_name="domains"
    )
    vcpus = models.PositiveIntegerField(default=1)
    memory_mib = models.PositiveIntegerField(default=256)
    spec = models.JSONField(default=dict, blank=True)  # the DomainSpec sent to the agent
    state = models.CharField(max_length=16, choices=State.choices, default=State.NEW)
    autostart = models.BooleanField(default=False)  # started with the host, as its agent reports
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["host", "name"], name="domain_name_unique_per_host")]

    def __str__(self) -> str:
        return self.name


class ConsoleTicket(models.Model):
    """A single-use, short-lived permission to open one console WebSocket. Stored hashed."""

    class Kind(models.TextChoices):
        SERIAL = "serial", "Serial"

    key_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="console_tickets")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} console ticket for {self.domain_id} ({self.user_id})"
