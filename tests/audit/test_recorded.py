"""The actions of the console land in the audit trail, and the chain stays verifiable."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from console.audit.models import AuditEvent
from console.audit.verify import audit_verify
from domains.models import Domain
from hosts.models import Host

pytestmark = pytest.mark.django_db


def test_domain_actions_are_recorded_with_who_and_how(api: APIClient, user: Any, host: Host) -> None:
    body = {"name": "au1", "host": host.pk, "boot": {"iso": "/var/lib/libvirt/images/x.iso"}}
    domain_id = api.post("/api/v1/domains/", body, format="json", REMOTE_ADDR="198.51.100.4").json()[
        "domain"
    ]["id"]
    api.post(f"/api/v1/domains/{domain_id}/start/")
    api.delete(f"/api/v1/domains/{domain_id}/?delete_disks=true")
    events = list(AuditEvent.objects.filter(object_type="domain").order_by("seq"))
    assert [e.action for e in events] == ["domain.create", "domain.start", "domain.delete"]
    create = events[0]
    assert create.actor_name == user.username and create.token_prefix
    assert create.ip == "198.51.100.4"
    assert create.changes["spec"]["name"] == "au1"
    assert events[2].changes["delete_disks"] is True
    assert audit_verify().ok


def test_a_refusal_is_recorded_as_denied(django_user_model: Any, host: Host) -> None:
    from console.access.services import api_token_issue

    nobody = django_user_model.objects.create_user("nob", password="x-pass-1234")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=nobody)[1]}")
    assert (
        api.post(
            "/api/v1/hosts/", {"name": "h", "url": "http://127.0.0.1:1", "secret": "s" * 32}, format="json"
        ).status_code
        == 403
    )
    denied = AuditEvent.objects.get(outcome="denied")
    assert denied.actor_name == "nob" and "host.manage" in denied.detail


def test_sign_ins_and_failures_are_recorded(user: Any) -> None:
    browser = Client(REMOTE_ADDR="203.0.113.9")
    browser.post("/login/", {"username": "ana", "password": "wrong"})
    browser.post("/login/", {"username": "ana", "password": "s3cret-pass"})
    failed = AuditEvent.objects.get(action="auth.login_failed")
    assert failed.object_repr == "ana" and failed.outcome == "failed" and failed.ip == "203.0.113.9"
    assert AuditEvent.objects.get(action="auth.login").actor_name == "ana"


def test_host_secret_is_never_recorded(api: APIClient) -> None:
    secret = "never-in-the-audit-" + "x" * 16
    api.post("/api/v1/hosts/", {"name": "h2", "url": "http://127.0.0.1:2", "secret": secret}, format="json")
    event = AuditEvent.objects.get(action="host.register")
    assert secret not in str(event.changes)


def test_a_rejected_create_leaves_no_success_row(api: APIClient, host: Host) -> None:
    api.post(
        "/api/v1/domains/", {"name": "bad name", "host": host.pk, "boot": {"iso": "/etc/x"}}, format="json"
    )
    assert not AuditEvent.objects.filter(action="domain.create").exists()
    assert not Domain.objects.exists()
