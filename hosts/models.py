from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from console.encryption.fields import EncryptedTextField


class Host(models.Model):
    """A machine running the Domus agent. `facts` caches what the agent last reported."""

    class State(models.TextChoices):
        UNKNOWN = "unknown", "Unknown"
        ONLINE = "online", "Online"
        OFFLINE = "offline", "Offline"
        # The agent presented a certificate other than the pinned one: nothing is sent to it.
        IDENTITY_CHANGED = "identity_changed", "Identity changed"

    name = models.CharField(max_length=63, unique=True)
    url = models.URLField(max_length=255, help_text="The agent's base URL, e.g. https://kvm1:8901")
    # The console's credential towards this agent (it must be sent, so it is not hashed here:
    # it is encrypted at rest instead).
    secret = EncryptedTextField()
    # SHA-256 of the agent's certificate (lowercase hex), pinned at enrolment; empty only for
    # loopback agents reached over plain http.
    fingerprint = models.CharField(max_length=64, blank=True)
    # A host in maintenance receives no new domains; what runs on it is left alone.
    maintenance = models.BooleanField(default=False)
    maintenance_reason = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.UNKNOWN)
    state_detail = models.CharField(max_length=255, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    facts = models.JSONField(default=dict, blank=True)
    # Periodic figures from the agent (free memory, pools' free space, domains running).
    stats = models.JSONField(default=dict, blank=True)
    stats_at = models.DateTimeField(null=True, blank=True)
    # Reserved to these teams; shared by the whole site when empty.
    teams = models.ManyToManyField("access.Team", blank=True, related_name="hosts")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("https://")

    @property
    def resources(self) -> dict[str, Any]:
        """Pools, networks and bridges as last reported: the newer of the periodic stats (as
        hostwatch received them) and what a job or a change of pools recorded in the facts
        (hosts.services.host_resources_observed); the facts read when the agent connected count
        as older than any stats."""
        stats, facts = self.stats.get("resources"), self.facts.get("resources")
        if stats and (not facts or self.stats.get("received_at", 0) >= self.facts.get("resources_at", 0)):
            return dict(stats)
        return dict(facts or {})

    @property
    def default_pool_path(self) -> str:
        return str(self.facts.get("default_pool_path") or "/var/lib/libvirt/images")


class Upload(models.Model):
    """An ISO or image on its way into one of a host's pools: sent by a browser or `curl` through
    the console (tus, hosts.uploads), or fetched from a URL by the host's agent. The agent holds
    the bytes (a hidden file beside the pool's volumes, renamed on completion) and is the truth
    about how many it has; this row is who asked, for whom, and what came of it."""

    class Source(models.TextChoices):
        UPLOAD = "upload", "Uploaded"
        URL = "url", "Fetched from a URL"

    class State(models.TextChoices):
        UPLOADING = "uploading", "Uploading"
        FETCHING = "fetching", "Fetching"
        COMPLETE = "complete", "Complete"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True)
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="uploads")
    pool = models.CharField(max_length=255)
    name = models.CharField(max_length=255)  # the volume's name once complete
    filename = models.CharField(max_length=255, blank=True)  # as the browser named the file
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.UPLOAD)
    source_url = models.CharField(max_length=2048, blank=True)  # shown without secrets
    length = models.BigIntegerField(null=True, blank=True)  # unknown for some fetches
    offset = models.BigIntegerField(default=0)  # as the agent last said
    state = models.CharField(max_length=10, choices=State.choices, default=State.UPLOADING)
    sha256 = models.CharField(max_length=64, blank=True)
    expected_sha256 = models.CharField(max_length=64, blank=True)
    path = models.CharField(max_length=1024, blank=True)  # the volume, once complete
    error = models.TextField(blank=True)
    # Whose the volume will be: a team's, or (library) the site's read-only media.
    team = models.ForeignKey(
        "access.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    library = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="uploads", db_index=False
    )
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["created_by", "-created_at"]),
            models.Index(fields=["state", "updated_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    @property
    def done(self) -> bool:
        return self.state not in (self.State.UPLOADING, self.State.FETCHING)


class NetworkAccess(models.Model):
    """Which teams may put network cards on one of a host's virtual networks: a network with no
    row here, or with no teams in it, is open to every team that may use the host. Kept by the
    network's name (the network itself is libvirt's; this is Domus's rule about it). A host's
    managers may always use it."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="network_access")
    network = models.CharField(max_length=64)
    teams = models.ManyToManyField("access.Team", blank=True, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["host", "network"], name="network_access_unique_per_host")
        ]

    def __str__(self) -> str:
        return f"{self.network} on {self.host_id}"
