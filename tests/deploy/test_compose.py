"""The production deployment, for real: docker/compose.yaml built and started (PostgreSQL, Redis,
nginx terminating TLS, two web replicas, two workers, two hostwatch shards, the scheduler), a
Debian host with the agent installed from its .deb enrolled by pairing code, a real guest created
and started through web replica 1, its serial console through replica 2, its events on both,
then a web replica, the workers and a hostwatch shard killed mid-job and each seen back, with the
job finished once.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from websockets.sync.client import ClientConnection, connect

from tests.deploy.compose import ComposeStack, compose_stack
from tests.deploy.containers import AGENT_PID_FILE, AgentHost

pytestmark = [pytest.mark.e2e]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def stack(debian_agent_host: AgentHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    # Short leases, so that a job whose worker was killed is taken over in seconds.
    with compose_stack(tmp_path_factory.mktemp("compose"), DOMUS_JOB_LEASE_SECONDS="8") as running:
        running.wait_healthy()
        yield running


class Api:
    """The API as a script would call it: through the proxy, or straight at one web replica (as
    the proxy does: plain HTTP on loopback, saying the request came over HTTPS)."""

    def __init__(self, base: str, token: str, verify: Path | bool = True, host: str = "") -> None:
        self.base, self.verify = base, verify
        self.headers = {"Authorization": f"Token {token}"}
        if host:
            self.headers |= {"Host": host, "X-Forwarded-Proto": "https"}

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method, self.base + path, headers=self.headers, verify=self.verify, timeout=30, **kwargs
        )

    def wait_job(self, job_id: int, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with_retry = self("GET", f"/api/v1/jobs/{job_id}/")
            if with_retry.status_code == 200:
                job = with_retry.json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} still {job.get('status')}: {job.get('log')}")


class EventsTap:
    """One /ws/events/ socket on a replica, collecting what arrives, in a thread."""

    def __init__(self, url: str, token: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.ws = connect(
            url, additional_headers={"Authorization": f"Token {token}"}, open_timeout=20, legacy=True
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                self.events.append(json.loads(message))
        except Exception:  # closed at the end of the test
            pass

    def saw(self, domain_id: int, state: str) -> bool:
        return any(
            e.get("type") == "domain.state"
            and e["domain"]["id"] == domain_id
            and e["domain"]["state"] == state
            for e in list(self.events)
        )

    def close(self) -> None:
        self.ws.close()


def read_until(ws: ClientConnection, marker: bytes, timeout: float = 90) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{marker!r} not seen; got {seen[-600:]!r}")
        message = ws.recv(timeout=left)
        if isinstance(message, bytes):
            seen += message
    return seen


def wait_for(check: Any, what: str, timeout: float = 120) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


def test_the_production_deployment(stack: ComposeStack, debian_agent_host: AgentHost) -> None:
    host = debian_agent_host
    cert = stack.tls_certificate()
    public = stack.public_url
    timings: dict[str, float] = {}

    # Sign in through the TLS proxy, as a browser does (its certificate verified).
    browser = requests.Session()
    browser.trust_env = False  # else REQUESTS_CA_BUNDLE wins over the session's own verify
    browser.verify = str(cert)
    login = browser.get(public + "/login/", timeout=30)
    assert login.status_code == 200 and login.url.startswith("https://")
    signed_in = browser.post(
        public + "/login/",
        data={
            "username": "admin",
            "password": stack.settings["DOMUS_ADMIN_PASSWORD"],
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
        headers={"Referer": public + "/login/"},
        timeout=30,
    )
    assert signed_in.status_code == 200 and "Hosts" in signed_in.text, signed_in.text[:500]
    assert browser.cookies.get("sessionid") and "Strict-Transport-Security" in signed_in.headers

    token = stack.manage("web-1", "issue_token", "admin").strip()
    via_proxy = Api(public, token, verify=cert)
    replica = {n: Api(stack.web_url(n), token, host="localhost") for n in (1, 2)}

    # Enrol the Debian host (agent from the .deb) by its pairing code, pinning its certificate.
    enrolled = via_proxy(
        "POST",
        "/api/v1/hosts/",
        json={
            "name": "debhost",
            "url": host.url,
            "pairing_code": host.pairing_code,
            "fingerprint": host.fingerprint,
        },
    )
    assert enrolled.status_code == 201, enrolled.text
    host_id = enrolled.json()["id"]
    timings["host_online_s"] = wait_for(
        lambda: via_proxy("GET", f"/api/v1/hosts/{host_id}/").json()["state"] == "online", "host online"
    )

    # Events on both replicas, from before the guest exists.
    taps = {
        n: EventsTap(f"ws://127.0.0.1:{stack.settings[f'DOMUS_WEB{n}_PORT']}/ws/events/", token)
        for n in (1, 2)
    }
    try:
        # A real guest, created and started through web replica 1.
        boot = {
            "kind": "kernel",
            "kernel": f"{host.pool}/{host.guest_kernel}",
            "initrd": f"{host.pool}/{host.guest_initrd}",
            "cmdline": "console=ttyS0",
        }
        body = {"name": "deployed", "host": host_id, "memory_mib": 128, "boot": boot, "start": True}
        created = replica[1]("POST", "/api/v1/domains/", json=body)
        assert created.status_code == 202, created.text
        domain_id = created.json()["domain"]["id"]
        job = replica[1].wait_job(created.json()["job"]["id"])
        assert job["status"] == "succeeded", job
        assert "running" in host.virsh("domstate", "deployed")
        for n, tap in taps.items():
            wait_for(
                lambda tap=tap: tap.saw(domain_id, "running"), f"replica {n}: the domain's event", timeout=60
            )

        # Its serial console through web replica 2: the guest's shell echoes what is typed.
        ticket = replica[2]("POST", f"/api/v1/domains/{domain_id}/console-tickets/", json={"kind": "serial"})
        assert ticket.status_code == 201, ticket.text
        url = f"ws://127.0.0.1:{stack.settings['DOMUS_WEB2_PORT']}{ticket.json()['url']}"
        with connect(
            url, additional_headers=replica[2].headers | {"Host": "localhost"}, open_timeout=20
        ) as console:
            read_until(console, b"guest# ")
            word = f"deployed-{secrets.token_hex(4)}"
            console.send(f"echo {word}\r".encode())
            assert word.encode() in read_until(console, f"{word}\r\n".encode())

        # A job in flight (its worker inside the agent call: the agent is stopped), then a web
        # replica, both workers and the hostwatch shard that watches the host are killed.
        shard = f"hostwatch-{host_id % 2}"
        killed = ["web-1", "worker-1", "worker-2", shard]
        before = {service: stack.restarts(service) for service in killed}
        host.exec("sh", "-c", f"kill -STOP $(cat {AGENT_PID_FILE})")
        try:
            shutdown = via_proxy("POST", f"/api/v1/domains/{domain_id}/force-off/")
            assert shutdown.status_code == 202, shutdown.text
            job_id = shutdown.json()["job"]["id"]
            wait_for(
                lambda: via_proxy("GET", f"/api/v1/jobs/{job_id}/").json()["status"] == "running",
                "job running",
            )
            killed_at = time.monotonic()
            for service in killed:
                stack.kill(service)
        finally:
            host.exec("sh", "-c", f"kill -CONT $(cat {AGENT_PID_FILE})")
        for service in killed:
            wait_for(
                lambda service=service: stack.restarts(service) > before[service] and stack.running(service),
                f"{service} back",
                timeout=90,
            )
        timings["all_back_s"] = time.monotonic() - killed_at
        timings["healthy_again_s"] = stack.wait_healthy(timeout=120)
        ended = via_proxy.wait_job(job_id)
        timings["job_done_after_kill_s"] = time.monotonic() - killed_at
        assert ended["status"] == "succeeded", ended
        assert "shut off" in host.virsh("domstate", "deployed")
        finished = via_proxy(
            "GET",
            "/api/v1/audit/",
            params={"action": "job.finished", "object_type": "job", "object_id": str(job_id)},
        ).json()
        assert finished["count"] == 1, finished
        wait_for(
            lambda: via_proxy("GET", f"/api/v1/domains/{domain_id}/").json()["state"] == "shutoff",
            "state shown",
        )
        # The killed shard watches its host again (the host is online: heard since the restart).
        wait_for(
            lambda: via_proxy("GET", f"/api/v1/hosts/{host_id}/").json()["state"] == "online",
            "host online again",
        )
        assert replica[1]("GET", "/livez").status_code == 200
    finally:
        for tap in taps.values():
            tap.close()
        host.exec("virsh", "-c", "qemu:///system", "destroy", "deployed", check=False)
        host.exec("virsh", "-c", "qemu:///system", "undefine", "deployed", check=False)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "deploy.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))
