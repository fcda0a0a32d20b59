"""Typed errors of the audit trail."""

from __future__ import annotations

from console.errors import Conflict


class AuditAppendOnly(Conflict):
    """Someone tried to change or delete an audit event outside the retention service."""

    code = "audit_append_only"
