from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.access.services import api_token_issue
from hosts.models import Host


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("ana", password="s3cret-pass")


@pytest.fixture
def api(user: Any) -> APIClient:
    _, key = api_token_issue(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def host(db: None) -> Host:
    return Host.objects.create(
        name="h1",
        url="http://127.0.0.1:1",
        secret="x" * 32,
        state=Host.State.ONLINE,
        facts={"default_pool_path": "/var/lib/libvirt/images"},
    )
