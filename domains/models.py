from __future__ import annotations

import uuid
from typing import Any

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
        FAILED = "failed", "Create failed"

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
    # Why its create failed (state FAILED), for the person who may retry or delete it.
    failure = models.TextField(blank=True)
    autostart = models.BooleanField(default=False)  # started with the host, as its agent reports
    # Disks and CD-ROMs as its agent reports them: [{"target", "device", "path"}]
    disks = models.JSONField(default=list, blank=True)
    # Network cards as its agent reports them: [{"mac", "source", "name", "model", "target", "link"}]
    nics = models.JSONField(default=list, blank=True)
    # Each card's addresses as its agent last said: [{"mac", "addresses": [{"address", "prefix",
    # "family", "source"}]}]; with them as one searchable text ("which guest has 10.1.2.3?") and
    # a sort key (the first IPv4 address, zero-padded so that text order is numeric order).
    addresses = models.JSONField(default=list, blank=True)
    address_text = models.CharField(max_length=1024, blank=True, default="")
    address_sort = models.CharField(max_length=64, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["host", "name"], name="domain_name_unique_per_host")]
        # The lists' sort keys (domains.selectors.ORDERINGS), each ending on the id: a page is read
        # from the index, forwards or backwards, instead of sorting every domain per request.
        indexes = [
            models.Index(fields=["name", "id"], name="domain_list_by_name"),
            models.Index(fields=["state", "name", "id"], name="domain_list_by_state"),
            models.Index(fields=["memory_mib", "name", "id"], name="domain_list_by_memory"),
            models.Index(fields=["vcpus", "name", "id"], name="domain_list_by_vcpus"),
            models.Index(fields=["created_at", "id"], name="domain_list_by_created"),
            models.Index(fields=["address_sort", "name", "id"], name="domain_list_by_address"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def flat_addresses(self) -> list[dict[str, Any]]:
        """Every address of every card, IPv4 first (domains.events.flat_addresses)."""
        from domains.events import flat_addresses  # events imports this module

        return flat_addresses(self.addresses or [])

    @property
    def may_have_display(self) -> bool:
        """False only when Domus created it without a display; a domain found on its host (no
        spec) may have one, which its agent knows."""
        return not self.spec or bool(self.spec.get("graphics"))


class ConsoleTicket(models.Model):
    """A single-use, short-lived permission to open one console WebSocket. Stored hashed."""

    class Kind(models.TextChoices):
        SERIAL = "serial", "Serial"
        VNC = "vnc", "Graphical (VNC)"

    key_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="console_tickets")

    class Mode(models.TextChoices):
        VIEW = "view", "Watch"
        INTERACT = "interact", "Watch and type"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    # A view ticket's socket never sends a keystroke to the guest.
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.INTERACT)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} console ticket for {self.domain_id} ({self.user_id})"


class Volume(models.Model):
    """A volume (a file or block device in one of a host's pools) and who it belongs to, so that a
    path in a request is checked against its owner, not only against where it lies
    (domains.volumes). A volume a domain created or was first seen using belongs to that domain's
    team; the site's library (ISOs, base images, read-only) belongs to none. A pool file with no
    row is the site's: usable read-only (an ISO, a backing image) by anyone who may create, and
    as a writable disk only by those who manage the host. Those who manage the host change the
    owner, the library flag and the grants (domains.volumes.volume_update)."""

    host = models.ForeignKey("hosts.Host", on_delete=models.CASCADE, related_name="volumes")
    path = models.CharField(max_length=1024)
    team = models.ForeignKey(
        "access.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="volumes"
    )
    # The domain that created it (or was first seen using it); kept as None once it is deleted.
    domain = models.ForeignKey(
        Domain, null=True, blank=True, on_delete=models.SET_NULL, related_name="volumes"
    )

    class Origin(models.TextChoices):
        DOMAIN = "domain", "A domain's disk"  # made by a domain, or first seen as one's
        POOL = "pool", "Made in its pool"  # from the host's pool page or API, for no domain

    # The name of that domain, kept when it is deleted: "an orphan of web1".
    domain_name = models.CharField(max_length=63, blank=True)
    # With `domain` None, a DOMAIN volume outlived the domain that had it: an orphan.
    origin = models.CharField(max_length=8, choices=Origin.choices, default=Origin.DOMAIN)
    library = models.BooleanField(default=False)  # the site's shared, read-only media
    # Its size when the console learned it (made, grown or uploaded here, or reported by its
    # host as a domain's disk): what the team's disk quota counts (console.access.quotas).
    capacity_bytes = models.BigIntegerField(null=True, blank=True)
    # Teams that use it as its owner does (read-only media, or a disk no other domain writes),
    # without owning it: a delete with disks by one of their domains keeps it.
    granted_to = models.ManyToManyField("access.Team", blank=True, related_name="granted_volumes")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["host", "path"], name="volume_path_unique_per_host")]

    def __str__(self) -> str:
        return self.path
