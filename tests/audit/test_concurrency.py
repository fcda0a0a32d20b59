from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection

from console.audit.models import AuditEvent, AuditHead
from console.audit.services import audit_record
from console.audit.verify import audit_verify

APPENDS = 20
WORKERS = 5


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_make_a_gapless_chain() -> None:
    start = threading.Barrier(WORKERS)

    def append(worker: int) -> list[int]:
        try:
            start.wait()
            return [
                audit_record(action="job.finished", object_type="job", object_id=f"{worker}-{i}").seq
                for i in range(APPENDS // WORKERS)
            ]
        finally:
            connection.close()  # each thread has its own connection

    with ThreadPoolExecutor(WORKERS) as pool:
        seqs = sorted(s for batch in pool.map(append, range(WORKERS)) for s in batch)

    assert seqs == list(range(1, APPENDS + 1))
    assert AuditEvent.objects.count() == APPENDS
    assert AuditHead.objects.count() == 1  # the racing first appends created one head
    result = audit_verify()
    assert (result.ok, result.checked) == (True, APPENDS), result


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_with_existing_head(django_user_model: Any) -> None:
    audit_record(action="auth.login")

    def append(i: int) -> int:
        try:
            return audit_record(action="domain.start", object_id=str(i)).seq
        finally:
            connection.close()

    with ThreadPoolExecutor(WORKERS) as pool:
        seqs = sorted(pool.map(append, range(APPENDS)))
    assert seqs == list(range(2, APPENDS + 2))
    assert audit_verify().ok
