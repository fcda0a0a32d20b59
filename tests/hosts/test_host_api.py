from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from hosts.models import Host

pytestmark = pytest.mark.django_db

SECRET = "s" * 32


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8901", "http://localhost:8901", "http://[::1]:8901"],
)
def test_register_a_host(api: APIClient, url: str) -> None:
    response = api.post("/api/v1/hosts/", {"name": "kvm1", "url": url, "secret": SECRET}, format="json")
    assert response.status_code == 201, response.content
    assert "secret" not in response.json()
    assert Host.objects.get(name="kvm1").url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.10:8901",
        "http://kvm1.example.org:8901",
        "ftp://127.0.0.1/",
        "https://kvm1.example.org:8901",  # TLS agents pair with a code instead
    ],
)
def test_secret_never_goes_over_plain_http_to_another_machine(api: APIClient, url: str) -> None:
    response = api.post("/api/v1/hosts/", {"name": "kvm1", "url": url, "secret": SECRET}, format="json")
    assert response.status_code == 400, response.content
    assert "url" in response.json().get("fields", response.json())
    assert not Host.objects.exists()


def test_host_secret_is_never_shown(api: APIClient, host: Host) -> None:
    assert "secret" not in api.get(f"/api/v1/hosts/{host.pk}/").json()
    assert host.secret not in api.get("/api/v1/hosts/").content.decode()
