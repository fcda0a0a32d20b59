"""Schemathesis against the API's own OpenAPI schema (`/api/v1/schema/`): every operation gets
requests generated from its schema, valid and deliberately invalid, as a site admin and as a team
member, through the WSGI application in this process (no server, no network). No answer may be a
5xx, and an answer the schema documents must match it.

Bounded and deterministic (derandomize: the same requests every run): about 2,000 requests,
40 s on this 2-CPU machine, so `make test` runs it and `make check` leaves it out (marker
`fuzz`; `pytest -m fuzz` runs it alone; the two quick tests at the end run in both). Nothing reaches a host: jobs are queued in the test's
transaction (their dispatch waits for a commit that never comes), the fleet's host is on a closed
port, and any attempt at a network connection fails the test (`no_network`).
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, Phase, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from console.access.models import Membership, Team
from console.access.services import api_token_issue
from console.audit.models import AuditEvent
from console.jobs.services import job_enqueue
from domains.models import Domain, Volume
from hosts.models import Host
from tests.conftest import builtin_role, grant

pytestmark = pytest.mark.django_db

# tus's PATCH body (an upload's bytes) is sent as raw bytes, as octet-stream bodies are.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")

# Examples per operation in the fuzzing phase (valid and invalid); the coverage phase adds its
# boundary and wrong-type cases, about 1,400 in all.
MAX_EXAMPLES = 12


def _served_schema() -> dict[str, Any]:
    """The document /api/v1/schema/ serves (drf-spectacular, public: every operation), built
    here at collection, before any test database exists to sign in with; the test below checks
    it is what the endpoint answers."""
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return dict(json.loads(OpenApiJsonRenderer().render(generated)))


class _Application:
    """Django's WSGI application, kept from closing the database connection at the start and
    end of each request as a server's would: the test's data lives in the test's transaction
    on that connection (django.test.Client does the same)."""

    def __init__(self) -> None:
        self.handler = WSGIHandler()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = self.handler(environ, start_response)
            try:
                return [b"".join(response)]
            finally:
                response.close()  # request_finished, as a server sends it
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)


# The coverage phase (schemathesis's boundary and wrong-type values for every parameter and
# property, the kind of value behind issue 18's crashes) with its invalid values only: the
# fuzzing phase sends valid ones. And not every other HTTP method on each path (a 405 each).
CONFIG = schemathesis.Config.from_dict(
    {"phases": {"coverage": {"unexpected-methods": [], "generation": {"mode": "negative"}}}}
)
schema = (
    schemathesis.openapi.from_dict(_served_schema(), config=CONFIG)
    .exclude(
        # These dial the host's agent from the request itself, by design (enrolment pairs with the
        # agent at the URL given; removal and secret rotation tell the agent first), so generated
        # requests would open connections to generated addresses. tests/hosts covers them against
        # real agents.
        method="POST",
        path="/api/v1/hosts/",
    )
    .exclude(method="DELETE", path="/api/v1/hosts/{id}/")
    .exclude(method="POST", path="/api/v1/hosts/{id}/rotate-secret/")
)
schema.app = _Application()


@dataclass
class Fleet:
    keys: tuple[str, str]  # the site admin's token, the team member's
    ids: dict[str, int]  # a real object of each kind, by the path's resource
    turn: Iterator[int] = field(default_factory=itertools.count)


@pytest.fixture
def fleet(user: Any, host: Host, django_user_model: Any) -> Fleet:
    """A site admin (`user`, a site Owner), a team with an Operator, a domain of that team on
    an existing volume (the case that broke quotas) and that volume's record, its job, and a grant."""
    team = Team.objects.create(name="blue", max_domains=5, max_disk_gib=100)
    tess = django_user_model.objects.create_user("tess", password="x-pass-1234")
    Membership.objects.create(user=tess, team=team, role=builtin_role("Operator"))
    domain = Domain.objects.create(
        name="vm1",
        host=host,
        team=team,
        state=Domain.State.SHUTOFF,
        spec={"disks": [{"existing": "/var/lib/libvirt/images/vm1.qcow2", "size_gib": None}]},
    )
    job = job_enqueue(kind="domain.start", actor=user, host=host, domain=domain)
    volume = Volume.objects.create(
        host=host, path="/var/lib/libvirt/images/vm1.qcow2", team=team, domain=domain
    )
    site_grant = grant(tess, "Viewer", domain)
    admin_token, admin_key = api_token_issue(user=user, name="fuzz")
    _, member_key = api_token_issue(user=tess, name="fuzz")
    audit = AuditEvent.objects.order_by("seq").last()
    ids = {
        "domains": domain.pk,
        "volumes": volume.pk,
        "hosts": host.pk,
        "jobs": job.pk,
        "teams": team.pk,
        "grants": site_grant.pk,
        "tokens": admin_token.pk,
        "roles": builtin_role("Viewer").pk,
        "audit": audit.seq if audit is not None else 1,
    }
    return Fleet(keys=(admin_key, member_key), ids=ids)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every attempt at an IP connection or a name lookup from this process fails, and is
    listed: the test fails if there was any (the embedded Redis is a unix socket, the test
    database a file or a unix socket, and requests go to the WSGI application in process)."""
    attempts: list[Any] = []
    connect = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise ConnectionRefusedError(f"no network in this test: {address}")
        return connect(self, address)

    def unresolved(host: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(host)
        raise socket.gaierror(socket.EAI_NONAME, f"no name lookups in this test: {host}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", unresolved)
    yield attempts
    assert attempts == [], f"tried to reach {attempts}"


def _aim_at_real_objects(case: Any, fleet: Fleet) -> None:
    """Half the generated ids become the id of a real object of their kind, so that the
    operation does its work, not only its 404."""
    path = case.path_parameters or {}
    resource = case.operation.path.split("/")[3]
    for name in ("id", "seq"):
        value = path.get(name)
        if isinstance(value, int) and value % 2 == 0 and resource in fleet.ids:
            path[name] = fleet.ids[resource]
    if "username" in path and isinstance(path["username"], str) and len(path["username"]) % 2 == 0:
        path["username"] = "tess"


@pytest.mark.fuzz
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_request_is_a_server_error(case: Any, fleet: Fleet, no_network: list[Any]) -> None:
    _aim_at_real_objects(case, fleet)
    # Each case as one of the two, in turn: the admin reaches every operation's work, the member
    # its refusals and what a team sees.
    key = fleet.keys[next(fleet.turn) % len(fleet.keys)]
    response = case.call(headers={"Authorization": f"Token {key}"})
    case.validate_response(
        response, checks=[not_a_server_error, content_type_conformance, response_schema_conformance]
    )


def test_the_schema_fuzzed_is_the_one_served(api: APIClient) -> None:
    served = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert served.status_code == 200
    assert json.loads(served.content)["paths"] == _served_schema()["paths"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/api/v1/audit/export/", {"query": {"format": "json"}}),
        ("GET", "/api/v1/teams/", {}),
        ("GET", "/api/v1/access/why/", {"query": {"action": "domain.power", "domain": "{domains}"}}),
        ("POST", "/api/v1/domains/{id}/start/", {"path_parameters": {"id": "{domains}"}}),
        ("DELETE", "/api/v1/domains/{id}/", {"path_parameters": {"id": "{domains}"}}),
        (
            "POST",
            "/api/v1/domains/",
            {
                "body": {
                    "name": "web",
                    "host": "{hosts}",
                    "team": "{teams}",
                    "boot": {"kind": "iso", "iso": "/var/lib/libvirt/images/x.iso"},
                }
            },
        ),
        ("POST", "/api/v1/tokens/", {"body": {"name": "ci"}}),
        ("GET", "/api/v1/volumes/", {"query": {"host": "{hosts}"}}),
        (
            "PATCH",
            "/api/v1/volumes/{id}/",
            {
                "path_parameters": {"id": "{volumes}"},
                "body": {"team": None, "library": True, "granted_to": ["{teams}"]},
            },
        ),
    ],
)
def test_answers_match_the_schema(
    fleet: Fleet, no_network: list[Any], method: str, path: str, kwargs: dict[str, Any]
) -> None:
    """Successful answers the fuzzing may not reach, checked against what the schema says."""

    def real(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: real(v) for k, v in value.items()}
        if isinstance(value, list):
            return [real(v) for v in value]
        if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
            return fleet.ids[value[1:-1]]
        return value

    media = {"media_type": "application/json"} if "body" in kwargs else {}
    case = schema[path][method].Case(**real(kwargs), **media)
    response = case.call(headers={"Authorization": f"Token {fleet.keys[0]}"})
    assert response.status_code < 300, response.text
    case.validate_response(
        response, checks=[not_a_server_error, content_type_conformance, response_schema_conformance]
    )
