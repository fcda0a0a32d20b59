from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from console.audit.chain import HASHED_FIELDS, event_hash
from console.audit.errors import AuditAppendOnly


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    """The default manager cannot rewrite or remove events; pruning goes through
    `audit_prune`, which deletes through the base manager and moves the chain's anchor."""

    def update(self, **kwargs: Any) -> int:
        raise AuditAppendOnly("Audit events are append-only and cannot be updated.")

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> int:
        raise AuditAppendOnly("Audit events are append-only and cannot be updated.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AuditAppendOnly("Audit events are removed only by the retention service (audit_prune).")


class AuditEvent(models.Model):
    """One state-changing action: who, from where, on what, what changed, and how it ended.

    Append-only and chained: `hash` is sha256 over the canonical JSON of the other fields
    (console.audit.chain), `prev_hash` is the previous event's hash. Written only by
    console.audit.services.audit_record."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        DENIED = "denied", "Denied"
        FAILED = "failed", "Failed"

    seq = models.PositiveBigIntegerField(unique=True)
    created_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True)  # survives the user's deletion
    token_prefix = models.CharField(max_length=16, blank=True)  # set when the call used an API token
    ip = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=64, db_index=True)  # e.g. domain.create, auth.login_failed
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=8, choices=Outcome.choices, default=Outcome.SUCCESS)
    detail = models.TextField(blank=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_object_idx"),
            models.Index(fields=["actor_name", "seq"], name="audit_actor_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.outcome}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AuditAppendOnly("Audit events are append-only and cannot be updated.")
        if not self.hash or self.hash != self.compute_hash():
            raise AuditAppendOnly("Audit events are appended only through audit_record.")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AuditAppendOnly("Audit events are removed only by the retention service (audit_prune).")

    def hashed_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HASHED_FIELDS}

    def compute_hash(self) -> str:
        return event_hash(self.hashed_fields())


class AuditHead(models.Model):
    """The single row that serialises appends (locked with select_for_update in the appending
    transaction) and records where the chain stands: its last event, and the anchor left by
    pruning (the last pruned event), from which verification starts."""

    SINGLETON_ID = 1

    last_seq = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, blank=True)
    anchor_seq = models.PositiveBigIntegerField(default=0)
    anchor_hash = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"audit head at #{self.last_seq}"
