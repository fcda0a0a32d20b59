"""Adding a host with a pairing code, pinned TLS, rotation, removal, and every failure."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from agent.client import AgentClient, AgentIdentityChanged, AgentUnauthorized
from agent.identity import AgentIdentity
from agent.protocol import format_fingerprint
from console.audit.models import AuditEvent
from domains.models import Domain
from hosts.agent import run_agent
from hosts.models import Host
from tests.agent.conftest import RunningAgent, agent_init, free_port, launch_agent, stop_agent
from tests.conftest import builtin_role, grant

pytestmark = [pytest.mark.django_db, pytest.mark.libvirt]


@pytest.fixture(scope="module")
def tls_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    base = tmp_path_factory.mktemp("tls-agent")
    (base / "pool").mkdir()
    agent = launch_agent(uri="test:///default", pool_dir=base / "pool", log_path=base / "agent.log", tls=True)
    try:
        yield agent
    finally:
        stop_agent(agent)


def new_code(agent: RunningAgent) -> str:
    """`domus-agent init` again: same certificate, a fresh pairing code."""
    assert agent.state_dir is not None
    fingerprint, code = agent_init(agent.state_dir, agent.url)
    assert fingerprint == agent.fingerprint
    return code


def add(api: APIClient, agent: RunningAgent, code: str, name: str = "kvm1", **extra: str) -> tuple[int, dict]:
    body = {"name": name, "url": agent.url, "pairing_code": code, **extra}
    response = api.post("/api/v1/hosts/", body, format="json")
    return response.status_code, response.json()


def test_enrol_pins_the_certificate_and_the_agent_keeps_only_a_hash(
    api: APIClient, tls_agent: RunningAgent
) -> None:
    status, body = add(
        api, tls_agent, new_code(tls_agent), fingerprint=format_fingerprint(tls_agent.fingerprint)
    )
    assert status == 201, body
    assert body["fingerprint"] == format_fingerprint(tls_agent.fingerprint) and body["uses_tls"]
    assert "secret" not in body
    host = Host.objects.get(name="kvm1")
    assert host.fingerprint == tls_agent.fingerprint and len(host.secret) >= 40
    assert tls_agent.state_dir is not None
    assert host.secret not in (tls_agent.state_dir / "consoles.json").read_text()
    # From now on: pinned TLS plus the secret.
    domains = run_agent(host, lambda client: client.list_domains())
    assert [d.name for d in domains] == ["test"]
    event = AuditEvent.objects.get(action="host.enrol")
    assert event.changes["fingerprint"] == tls_agent.fingerprint and host.secret not in json.dumps(
        event.changes
    )


def test_a_used_code_is_refused(api: APIClient, tls_agent: RunningAgent) -> None:
    code = new_code(tls_agent)
    assert add(api, tls_agent, code, name="first")[0] == 201
    status, body = add(api, tls_agent, code, name="second")
    assert status == 400 and "used already" in body["fields"]["pairing_code"][0], body
    assert not Host.objects.filter(name="second").exists()


def test_a_wrong_code_is_refused_and_counted(api: APIClient, tls_agent: RunningAgent) -> None:
    new_code(tls_agent)
    status, body = add(api, tls_agent, "2222-3333-4444")
    assert status == 400 and "does not match" in body["fields"]["pairing_code"][0], body
    assert "4 attempt(s) left" in body["fields"]["pairing_code"][0]
    assert not Host.objects.exists()


def test_a_malformed_code_never_reaches_the_agent(api: APIClient, tls_agent: RunningAgent) -> None:
    status, body = add(api, tls_agent, "0OIL-????")
    assert status == 400 and "XXXX-XXXX-XXXX" in body["fields"]["pairing_code"][0], body


def test_an_expired_code_is_refused(api: APIClient, tls_agent: RunningAgent) -> None:
    code = new_code(tls_agent)
    assert tls_agent.state_dir is not None
    pairing = tls_agent.state_dir / "pairing.json"
    state = json.loads(pairing.read_text())
    state["expires_at"] -= 16 * 60
    pairing.write_text(json.dumps(state))
    status, body = add(api, tls_agent, code)
    assert status == 400 and "expired" in body["fields"]["pairing_code"][0], body


def test_an_unreachable_url(api: APIClient) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    response = api.post(
        "/api/v1/hosts/", {"name": "gone", "url": url, "pairing_code": "2222-3333-4444"}, format="json"
    )
    assert response.status_code == 400
    assert "Cannot reach" in response.json()["detail"] and response.json()["fields"]["url"]


def test_a_fingerprint_mismatch_is_refused_and_spends_nothing(
    api: APIClient, tls_agent: RunningAgent
) -> None:
    code = new_code(tls_agent)
    status, body = add(api, tls_agent, code, fingerprint="SHA256:" + ":".join(["AB"] * 32))
    assert status == 400 and "not the agent you initialised" in body["fields"]["fingerprint"][0], body
    assert add(api, tls_agent, code)[0] == 201  # the code was never sent, so it still works


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://192.0.2.10:8901", "pairing needs https://"),
        ("http://127.0.0.1:8901", "added with its fixed secret"),
    ],
)
def test_pairing_needs_tls(api: APIClient, url: str, why: str) -> None:
    response = api.post(
        "/api/v1/hosts/", {"name": "x", "url": url, "pairing_code": "2222-3333-4444"}, format="json"
    )
    assert response.status_code == 400 and why in response.json()["fields"]["url"][0]


def test_only_host_managers_may_add(api: APIClient, tls_agent: RunningAgent, django_user_model: type) -> None:
    viewer = django_user_model.objects.create_user("vic", password="pw-vic-12345")
    grant(viewer, "Admin")
    client = APIClient()
    client.force_authenticate(viewer)
    status, body = add(client, tls_agent, new_code(tls_agent))
    assert status == 403 and "host.manage" in body["detail"], body


def enrolled(api: APIClient, agent: RunningAgent, name: str = "kvm1") -> Host:
    status, body = add(api, agent, new_code(agent), name=name)
    assert status == 201, body
    return Host.objects.get(pk=body["id"])


def test_rotate_the_secret(api: APIClient, tls_agent: RunningAgent) -> None:
    host = enrolled(api, tls_agent)
    old = host.secret
    response = api.post(f"/api/v1/hosts/{host.pk}/rotate-secret/")
    assert response.status_code == 200, response.content
    host.refresh_from_db()
    assert host.secret != old
    assert run_agent(host, lambda client: client.host()).hypervisor == "test"

    async def with_old() -> None:
        async with AgentClient(host.url, old, fingerprint=host.fingerprint) as client:
            await client.host()

    with pytest.raises(AgentUnauthorized):
        asyncio.run(with_old())
    assert AuditEvent.objects.filter(action="host.rotate_secret").exists()


def test_remove_makes_the_agent_forget_us(api: APIClient, tls_agent: RunningAgent, host: Host) -> None:
    kvm = enrolled(api, tls_agent)
    Domain.objects.create(host=kvm, name="vm1", uuid="00000000-0000-0000-0000-00000000abcd", state="running")
    response = api.delete(f"/api/v1/hosts/{kvm.pk}/")
    assert response.status_code == 200, response.content
    assert response.json() == {"forgotten_domains": ["vm1"], "agent_forgot_secret": True}
    assert not Host.objects.filter(pk=kvm.pk).exists() and not Domain.objects.filter(name="vm1").exists()
    with pytest.raises(AgentUnauthorized):
        run_agent(kvm, lambda client: client.host())  # the row is gone; the object still holds the secret


def test_remove_an_unreachable_host_needs_force(api: APIClient) -> None:
    gone = Host.objects.create(
        name="gone", url=f"https://127.0.0.1:{free_port()}", secret="s" * 40, fingerprint="ab" * 32
    )
    response = api.delete(f"/api/v1/hosts/{gone.pk}/")
    assert response.status_code == 409 and "forget-consoles" in response.json()["detail"]
    assert Host.objects.filter(pk=gone.pk).exists()
    response = api.delete(f"/api/v1/hosts/{gone.pk}/?force=true")
    assert response.status_code == 200 and response.json()["agent_forgot_secret"] is False
    assert AuditEvent.objects.get(action="host.remove").changes["forced"] is True


def test_a_changed_certificate_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    """An impostor with another certificate at the pinned address receives not one byte."""
    impostor = AgentIdentity(tmp_path / "impostor")
    impostor.ensure_certificate()
    received = bytearray()

    async def scenario() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(impostor.cert_path, impostor.key_path)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.extend(await reader.read(65536))
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            client = AgentClient(f"https://127.0.0.1:{port}", "the-secret" * 4, fingerprint="ab" * 32)
            async with client:
                with pytest.raises(AgentIdentityChanged) as changed:
                    await client.list_domains()
            assert "different TLS certificate" in changed.value.detail
            assert format_fingerprint(impostor.fingerprint()) in changed.value.detail
            await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert bytes(received) == b""


def test_maintenance(api: APIClient, host: Host, django_user_model: type) -> None:
    response = api.post(
        f"/api/v1/hosts/{host.pk}/maintenance/", {"maintenance": True, "reason": "RAM swap"}, format="json"
    )
    assert response.status_code == 200 and response.json()["maintenance"] is True
    spec = {"host": host.pk, "name": "vm1", "memory_mib": 64, "boot": {"iso": "x.iso"}}
    created = api.post("/api/v1/domains/", spec, format="json")
    assert created.status_code == 400, created.content
    assert "in maintenance (RAM swap)" in created.json()["fields"]["host"][0]
    operator = django_user_model.objects.create_user("op", password="pw-op-123456")
    grant(operator, "Operator")
    client = APIClient()
    client.force_authenticate(operator)
    denied = client.post(f"/api/v1/hosts/{host.pk}/maintenance/", {"maintenance": False}, format="json")
    assert denied.status_code == 403
    assert builtin_role("Operator")  # the role exists; it just lacks host.manage
