"""Uploads into the ISO and image library (hosts.uploads, hosts.tus): who may start one and for
whom, who may send its bytes, and the whole path on a real agent and libvirtd, with a sender
that goes away mid-body and a PATCH from the wrong offset."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from console.access.services import api_token_issue
from console.audit.models import AuditEvent
from domains.models import Volume
from hosts.models import Host, Upload
from hosts.tus import UploadPatch
from hosts.uploads import uploads_expire
from tests.console.test_access_matrix import (
    CASES,
    ROLES,
    World,
    client_for,
    make_subject,
    scope_reaches_host,
    world,  # noqa: F401 - the fixture
)
from tests.hosts.test_pool_volumes import agent_host, pool_name, real_agent  # noqa: F401 - fixtures
from tests.hosts.test_pools import IMAGES, give_pools, pool


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def tus_create(api: APIClient, where: Host, length: int, **extra: str) -> Any:
    fields = {"host": str(where.pk), "pool": "default", "name": "x.iso", **extra}
    return api.post(
        "/api/v1/uploads/",
        HTTP_UPLOAD_LENGTH=str(length),
        HTTP_UPLOAD_METADATA=metadata(**fields),
        HTTP_TUS_RESUMABLE="1.0.0",
    )


# -- the ASGI side of PATCH: driven in-process, as uvicorn would --------------------------------


async def _not_here(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError(f"{scope['method']} {scope['path']} should not reach Django")


def patch(
    upload_id: str,
    pieces: list[bytes],
    *,
    offset: int,
    token: str | None = None,
    drop: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """PATCH /api/v1/uploads/<id>/ through hosts.tus.UploadPatch, the body in `pieces`; with
    `drop`, the sender goes away after the last piece (no answer expected). The answer's status
    and headers, or None when the sender went away."""
    fields = {
        "upload-offset": str(offset),
        "tus-resumable": "1.0.0",
        "content-type": "application/offset+octet-stream",
        **({"authorization": f"Token {token}"} if token else {}),
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    wire = [(k.encode(), v.encode()) for k, v in fields.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PATCH",
        "scheme": "http",
        "path": f"/api/v1/uploads/{upload_id}/",
        "raw_path": f"/api/v1/uploads/{upload_id}/".encode(),
        "query_string": b"",
        "headers": wire,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": piece, "more_body": drop or i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    messages.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(UploadPatch(_not_here)(scope, receive, send))
    if not sent:
        return None
    start = sent[0]
    return {
        "status": start["status"],
        "headers": {k.decode(): v.decode() for k, v in start["headers"]},
        "body": b"".join(m.get("body", b"") for m in sent[1:]),
    }


# -- who may: creation through the API -----------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("role", "scope"), CASES)
def test_who_may_start_an_upload(role: str, scope: str, world: World) -> None:  # noqa: F811 - the fixture
    """`media.upload` reaching the host (Admin and Owner; not from a domain grant): past the
    access check, the request goes to the host's agent (which here does not answer: 502/503).
    Without it 403; a host not seen 404. A refusal leaves no upload behind."""
    for host in world.hosts.values():
        give_pools(host, pool("default", IMAGES))
    api = client_for(make_subject(role, scope, world))
    for name, host in world.hosts.items():
        sees = "host.view" in ROLES[role] and scope_reaches_host(scope, host, "host.view")
        may = "media.upload" in ROLES[role] and scope_reaches_host(scope, host, "media.upload")
        answer = tus_create(api, host, 1 << 20, team=str(world.teams["A"].pk))
        expected = {502, 503} if may else ({403} if sees else {404})
        assert answer.status_code in expected, (name, answer.status_code, answer.content)
    assert not Upload.objects.exists()


@pytest.mark.django_db
def test_creation_refusals_name_the_field(admin_user: Any) -> None:
    host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret="x" * 32)
    give_pools(
        host,
        pool("default", IMAGES),
        pool("vg", "/dev/vg", type="logical"),
        pool("off", "/srv/off", active=False),
    )
    api = APIClient()
    api.force_authenticate(admin_user)
    cases = [
        ({"pool": "vg"}, 400, "directory pools"),
        ({"pool": "off"}, 409, "not running"),
        ({"pool": "nope"}, 404, "nope"),
        ({"name": "../etc/passwd"}, 400, "name"),
        ({"name": ".hidden.iso"}, 400, "name"),
        ({"team": "999"}, 400, "team"),
        ({"host": "999"}, 404, "host"),
    ]
    for extra, status, said in cases:
        answer = tus_create(api, host, 1024, **extra)
        assert answer.status_code == status, (extra, answer.content)
        assert said in answer.content.decode(), (extra, answer.content)
    no_length = api.post(
        "/api/v1/uploads/", HTTP_UPLOAD_METADATA=metadata(host=str(host.pk), pool="default", name="a.iso")
    )
    assert no_length.status_code == 400 and "length" in no_length.json()["fields"]
    bad = api.post("/api/v1/uploads/", HTTP_UPLOAD_LENGTH="10", HTTP_UPLOAD_METADATA="name !!!")
    assert bad.status_code == 400 and "base64" in bad.content.decode()
    assert not Upload.objects.exists()


@pytest.mark.django_db
def test_tus_discovery_and_the_schema(admin_user: Any) -> None:
    api = APIClient()
    api.force_authenticate(admin_user)
    options = api.options("/api/v1/uploads/")
    assert options.status_code == 204
    assert options["Tus-Version"] == "1.0.0" and "creation" in options["Tus-Extension"]
    schema = api.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    operations = schema["paths"]["/api/v1/uploads/{upload_id}/"]
    assert {"get", "patch", "delete"} <= set(operations)  # (drf-spectacular leaves HEAD out)
    assert "/api/v1/uploads/fetch/" in schema["paths"]


@pytest.mark.django_db(transaction=True)
def test_only_the_uploader_sends_its_bytes(django_user_model: Any) -> None:
    """Checked before a byte goes anywhere (the host here has no agent at all)."""
    from tests.conftest import grant

    host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret="x" * 32)
    owner = django_user_model.objects.create_user("owner", password="x-pass-1234")
    other = django_user_model.objects.create_user("other", password="x-pass-1234")
    owners_grant = grant(owner, "Admin", host)
    grant(other, "Admin", host)
    upload = Upload.objects.create(
        id=uuid.uuid4(), host=host, pool="default", name="a.iso", length=10, created_by=owner
    )
    mine = api_token_issue(user=owner)[1]
    read_only = api_token_issue(user=owner, read_only=True)[1]
    theirs = api_token_issue(user=other)[1]
    key = upload.pk.hex

    def status(**kwargs: Any) -> int:
        answer = patch(key, [b"0123456789"], offset=0, **kwargs)
        assert answer is not None
        return int(answer["status"])

    assert status() == 401
    assert status(token="not-a-token") == 401
    assert status(token=theirs) == 404  # another's upload is not there for them
    assert status(token=read_only) == 403
    assert status(token=mine, headers={"Tus-Resumable": "0.2.2"}) == 412
    bad_offset = patch(key, [b"x"], offset=0, token=mine, headers={"upload-offset": "-1"})
    assert bad_offset is not None and bad_offset["status"] in (400,)
    too_long = patch(key, [b"x" * 11], offset=0, token=mine, headers={"content-length": "11"})
    assert too_long is not None and too_long["status"] == 400 and b"Upload-Length" in too_long["body"]
    owners_grant.delete()  # the grant withdrawn mid-upload: no more bytes
    assert status(token=mine) == 403
    Upload.objects.filter(pk=upload.pk).update(state=Upload.State.CANCELLED)
    grant(owner, "Admin", host)
    assert status(token=mine) == 409
    # Not even the agent's address was tried: the host's agent would have answered 502/503.
    assert Upload.objects.get(pk=upload.pk).offset == 0


@pytest.mark.django_db
def test_abandoned_uploads_expire(admin_user: Any) -> None:
    host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret="x" * 32)
    old = Upload.objects.create(
        id=uuid.uuid4(), host=host, pool="p", name="old.iso", length=9, created_by=admin_user
    )
    Upload.objects.create(
        id=uuid.uuid4(), host=host, pool="p", name="new.iso", length=9, created_by=admin_user
    )
    done = Upload.objects.create(
        id=uuid.uuid4(), host=host, pool="p", name="d.iso", length=9, state=Upload.State.COMPLETE
    )
    Upload.objects.filter(pk__in=[old.pk, done.pk]).update(updated_at=timezone.now() - timedelta(days=2))
    assert uploads_expire() == 1  # the agent does not answer: expired here all the same
    states = dict(Upload.objects.values_list("name", "state"))
    assert states == {"old.iso": "expired", "new.iso": "uploading", "d.iso": "complete"}


# -- the whole path on a real agent --------------------------------------------------------------


@pytest.fixture
def dir_pool(agent_host: Host, pool_name: str, tmp_path: Path) -> Iterator[tuple[Host, str, Path]]:  # noqa: F811
    """A directory pool of this test's own on the real host, known to the console."""
    from hosts.agent import run_agent
    from hosts.services import host_observe

    target = tmp_path / "isos"
    target.mkdir()
    target.chmod(0o755)
    for args in (["pool-define-as", pool_name, "dir", "--target", str(target)], ["pool-start", pool_name]):
        subprocess.run(["virsh", "-c", "qemu:///system", *args], check=True, capture_output=True)
    facts = run_agent(agent_host, lambda client: client.host())
    host_observe(host_id=agent_host.pk, state=Host.State.ONLINE, facts=facts.model_dump(mode="json"))
    agent_host.refresh_from_db()
    yield agent_host, pool_name, target


@pytest.mark.libvirt
@pytest.mark.django_db(transaction=True)
def test_an_upload_resumes_where_the_host_stopped_and_lands_in_the_pool(
    dir_pool: tuple[Host, str, Path], django_user_model: Any
) -> None:
    from tests.conftest import grant

    host, pool_called, target = dir_pool
    user = django_user_model.objects.create_user("uploader", password="x-pass-1234")
    grant(user, "Owner", host)
    key = api_token_issue(user=user)[1]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    payload = bytes(range(256)) * (12 * 4096)  # 12 MiB, not a multiple of any piece size
    payload += b"tail"
    created = tus_create(api, host, len(payload), pool=pool_called, name="install.iso", filename="debian.iso")
    assert created.status_code == 201, created.content
    assert created["Location"].startswith("/api/v1/uploads/") and created["Tus-Resumable"] == "1.0.0"
    upload_id = created.json()["id"].replace("-", "")
    # Only one upload at a time to a name.
    again = tus_create(api, host, len(payload), pool=pool_called, name="install.iso")
    assert again.status_code == 409 and "already on its way" in again.json()["detail"]

    # The sender goes away after 5 MiB (in 64 KiB pieces, as uvicorn hands them over).
    half = 5 << 20
    pieces = [payload[i : i + 65536] for i in range(0, half, 65536)]
    assert patch(upload_id, pieces, offset=0, token=key, drop=True) is None
    head = api.head(created["Location"])
    assert head.status_code == 200 and int(head["Upload-Offset"]) == half
    assert int(head["Upload-Length"]) == len(payload)
    assert not (target / "install.iso").exists()  # still under its hidden name

    # A PATCH from where the sender thinks it was: refused, saying where the host is.
    wrong = patch(upload_id, [payload[:100]], offset=0, token=key)
    assert wrong is not None and wrong["status"] == 409 and int(wrong["headers"]["upload-offset"]) == half

    rest = [payload[i : i + (1 << 20)] for i in range(half, len(payload), 1 << 20)]
    done = patch(upload_id, rest, offset=half, token=key)
    assert done is not None and done["status"] == 204, done
    assert int(done["headers"]["upload-offset"]) == len(payload)

    shown = api.get(created["Location"]).json()
    assert shown["state"] == "complete" and shown["sha256"] == hashlib.sha256(payload).hexdigest()
    assert shown["path"] == str(target / "install.iso")
    assert (target / "install.iso").read_bytes() == payload
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]  # nothing left behind
    record = Volume.objects.get(host=host, path=shown["path"])
    assert record.library and record.team is None and record.origin == Volume.Origin.POOL
    listed = api.get(f"/api/v1/hosts/{host.pk}/pools/{pool_called}/volumes/").json()["results"]
    assert [(v["name"], v["kind"], v["capacity_bytes"]) for v in listed] == [
        ("install.iso", "iso", len(payload))
    ]
    actions = list(AuditEvent.objects.filter(action__startswith="media.").values_list("action", flat=True))
    assert sorted(actions) == ["media.upload", "media.upload.complete"]
    # Complete: no more bytes, and no cancel (the volume is deleted from its pool).
    late = patch(upload_id, [b"x"], offset=len(payload), token=key)
    assert late is not None and late["status"] == 409
    assert api.delete(created["Location"]).status_code == 409


@pytest.mark.libvirt
@pytest.mark.django_db(transaction=True)
def test_a_cancelled_upload_leaves_nothing(dir_pool: tuple[Host, str, Path], admin_user: Any) -> None:
    host, pool_called, target = dir_pool
    key = api_token_issue(user=admin_user)[1]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    created = tus_create(api, host, 3 << 20, pool=pool_called, name="big.iso")
    assert created.status_code == 201, created.content
    upload_id = created.json()["id"].replace("-", "")
    # Sent through Django itself (a console served other than by console.asgi): the same answer.
    answer = api.patch(
        created["Location"],
        data=b"a" * (1 << 20),
        content_type="application/offset+octet-stream",
        HTTP_UPLOAD_OFFSET="0",
        HTTP_TUS_RESUMABLE="1.0.0",
    )
    assert answer.status_code == 204 and answer["Upload-Offset"] == str(1 << 20), answer.content
    again = api.patch(
        created["Location"], data=b"a", content_type="application/offset+octet-stream", HTTP_UPLOAD_OFFSET="0"
    )
    assert again.status_code == 409
    assert [p for p in target.iterdir()]  # the hidden part is there
    assert api.delete(created["Location"]).status_code == 204
    assert list(target.iterdir()) == []
    assert Upload.objects.get(pk=upload_id).state == Upload.State.CANCELLED
    assert api.head(created["Location"]).status_code == 410
    # The name is free again.
    assert tus_create(api, host, 10, pool=pool_called, name="big.iso").status_code == 201


# -- fetched by the agent from a URL --------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A plain HTTP server on loopback serving one file: its URL and bytes."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    data = bytes(range(256)) * 8192 + b"end"  # 2 MiB and a bit
    (root / "net.iso").write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/net.iso", data
    server.shutdown()
    server.server_close()


@pytest.fixture
def fetching_host(tmp_path: Path, pool_name: str, db: None) -> Iterator[tuple[Host, str, Path]]:  # noqa: F811
    """A real agent allowed to fetch from loopback (a lab mirror), with a directory pool."""
    from hosts.agent import run_agent
    from hosts.services import host_observe
    from tests.agent.conftest import launch_agent, stop_agent
    from tests.e2e.conftest import _libvirt_works

    if not _libvirt_works():
        pytest.skip("no libvirt daemon answers on qemu:///system (run `make test`, which starts it)")
    target = tmp_path / "fetched"
    target.mkdir()
    for args in (["pool-define-as", pool_name, "dir", "--target", str(target)], ["pool-start", pool_name]):
        subprocess.run(["virsh", "-c", "qemu:///system", *args], check=True, capture_output=True)
    agent = launch_agent(
        uri="qemu:///system",
        pool_dir=Path("/var/lib/libvirt/images"),
        log_path=tmp_path / "agent.log",
        accel="tcg",
        ready_timeout=60,
        env={"DOMUS_AGENT_NETINSTALL_ALLOW": "127.0.0.1/32"},
    )
    try:
        host = Host.objects.create(
            name="fetcher", url=agent.url, secret=agent.secret, state=Host.State.ONLINE
        )
        facts = run_agent(host, lambda client: client.host())
        host_observe(host_id=host.pk, state=Host.State.ONLINE, facts=facts.model_dump(mode="json"))
        host.refresh_from_db()
        yield host, pool_name, target
    finally:
        stop_agent(agent)


@pytest.mark.libvirt
@pytest.mark.django_db(transaction=True)
def test_the_agent_fetches_a_url_into_the_pool_as_a_job(
    fetching_host: tuple[Host, str, Path], served: tuple[str, bytes], admin_user: Any
) -> None:
    from console.jobs.models import Job
    from tests.hosts.test_pool_volumes import run_jobs

    host, pool_called, target = fetching_host
    url, data = served
    api = APIClient()
    api.force_authenticate(admin_user)
    digest = hashlib.sha256(data).hexdigest()
    body = {"host": host.pk, "pool": pool_called, "url": url, "sha256": digest}
    started = api.post("/api/v1/uploads/fetch/", body, format="json")
    assert started.status_code == 202, started.content
    (job,) = run_jobs()
    assert job.status == Job.Status.SUCCEEDED, (job.error, job.log)
    assert job.result["sha256"] == digest and "Fetched" in job.log
    upload = Upload.objects.get(pk=started.json()["upload"])
    assert (upload.state, upload.sha256, upload.source, upload.name) == ("complete", digest, "url", "net.iso")
    assert (target / "net.iso").read_bytes() == data
    assert Volume.objects.filter(host=host, path=str(target / "net.iso"), library=True).exists()

    # A checksum that does not match: the job fails saying so, and nothing is kept.
    wrong = {**body, "name": "wrong.iso", "sha256": "0" * 64}
    assert api.post("/api/v1/uploads/fetch/", wrong, format="json").status_code == 202
    (failed,) = run_jobs()
    assert failed.status == Job.Status.FAILED and "SHA-256" in failed.error.upper(), failed.error
    assert not (target / "wrong.iso").exists()
    assert Upload.objects.get(name="wrong.iso").state == Upload.State.FAILED
    # An address the agent refuses (its own management network stays out of reach).
    refused = {**body, "name": "x.iso", "url": "http://169.254.169.254/latest/meta-data", "sha256": ""}
    assert api.post("/api/v1/uploads/fetch/", refused, format="json").status_code == 202
    (denied,) = run_jobs()
    assert denied.status == Job.Status.FAILED and "169.254.169.254" in denied.error, denied.error
    assert not [p.name for p in target.iterdir() if p.name not in ("net.iso",)]
    actions = sorted(AuditEvent.objects.filter(action="media.fetch").values_list("action", flat=True))
    assert actions == ["media.fetch"] * 3


@pytest.mark.django_db
def test_the_wizard_offers_isos_with_their_checksum_and_the_upload(
    admin_user: Any, client: Any, django_user_model: Any
) -> None:
    from tests.conftest import grant

    host = Host.objects.create(name="h", url="http://127.0.0.1:1", secret="x" * 32)
    iso = {"name": "net.iso", "path": f"{IMAGES}/net.iso", "kind": "iso", "capacity_bytes": 5 << 20}
    give_pools(host, pool("default", IMAGES, volumes=[iso]))
    digest = "ab" * 32
    Upload.objects.create(
        id=uuid.uuid4(),
        host=host,
        pool="default",
        name="net.iso",
        length=5 << 20,
        state=Upload.State.COMPLETE,
        path=iso["path"],
        sha256=digest,
    )
    client.force_login(admin_user)
    page = client.get("/domains/new/").content.decode()
    assert f'"sha256": "{digest}"' in page and '"may_upload": true' in page
    operator = django_user_model.objects.create_user("op", password="x-pass-1234")
    grant(operator, "Operator", host)
    client.force_login(operator)
    assert '"may_upload": false' in client.get("/domains/new/").content.decode()
