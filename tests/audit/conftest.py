from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from unittest import mock

import pytest

from console.audit.models import AuditEvent
from console.audit.services import audit_record


@pytest.fixture
def record_at() -> Callable[..., AuditEvent]:
    """audit_record as if it ran at `moment`."""

    def record(moment: datetime, **kwargs: Any) -> AuditEvent:
        with mock.patch("django.utils.timezone.now", return_value=moment):
            return audit_record(**kwargs)

    return record


@pytest.fixture
def chain(user: Any) -> list[AuditEvent]:
    """Six events by `user`."""
    return [
        audit_record(
            action="domain.create", actor=user, object_type="domain", object_id=str(i), changes={"n": i}
        )
        for i in range(1, 7)
    ]
