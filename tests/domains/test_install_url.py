"""A network install's URL that can only reach the host itself is refused at the API, early.

The agent's check (tests/agent/test_netinstall_ssrf.py) is the real one; this spares a job for
an obviously bad URL and names the field.
"""

from __future__ import annotations

import pytest

from domains.specs import build_spec
from hosts.models import Host
from tests.domains.test_specs import _facts, base, errors_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def host(db: None) -> Host:
    return Host.objects.create(
        name="kvm1", url="http://127.0.0.1:1", secret="x" * 32, state=Host.State.ONLINE, facts=_facts()
    )


def install(url: str) -> dict[str, object]:
    return base(boot={"kind": "url", "url": url})


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:8901/v1/", "127.0.0.1 is a loopback address"),
        ("http://[::1]/os/", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/os/", "127.0.0.1 is a loopback address"),
        ("http://localhost/os/", "must not name localhost"),
        ("http://console.localhost./os/", "must not name localhost"),
        ("http://0.0.0.0/os/", "0.0.0.0 is an unspecified address"),
        ("http://169.254.169.254/latest/", "169.254.169.254 is a link-local address"),
        ("http://[fe80::1]/os/", "fe80::1 is a link-local address"),
        ("http://224.0.0.1/os/", "224.0.0.1 is a multicast address"),
        ("ftp://mirror.example.org/os/", "must be an http:// or https:// URL"),
    ],
)
def test_urls_that_reach_the_host_itself_are_refused(host: Host, url: str, says: str) -> None:
    errors = errors_of(install(url), host)
    assert list(errors) == ["boot.url"]
    assert says in errors["boot.url"][0]


@pytest.mark.parametrize(
    "url",
    ["https://mirror.example.org/os/", "http://10.0.0.5/os/", "http://[2001:db8::5]:8080/os/"],
)
def test_mirrors_pass_here_and_are_checked_by_the_agent(host: Host, url: str) -> None:
    assert build_spec(install(url), host).boot.kind == "url"
