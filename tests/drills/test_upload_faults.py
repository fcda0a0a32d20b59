"""Drills on an upload into the ISO library, in `make run`'s stack: the host's agent, then the
console's web process, killed (SIGKILL) while an upload's bytes stream through them. After each,
the launcher starts the part again, HEAD says what the host kept, the rest goes from there, and
the upload ends exactly once (one `media.upload.complete`), whole, with the right SHA-256, under
its name in the pool and nothing hidden left beside it."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.drills.conftest import DrillStack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.drill]

POOL_DIR = Path("/var/lib/libvirt/images")
SIZE = 48 << 20
PIECE = 1 << 20


@pytest.fixture
def volume_name() -> Iterator[str]:
    name = f"drill-{uuid.uuid4().hex[:6]}.iso"
    yield name
    (POOL_DIR / name).unlink(missing_ok=True)


def head(stack: DrillStack, location: str) -> int:
    answer = requests.head(stack.url + location, headers=tus_headers(stack, 0), timeout=30)
    assert answer.status_code == 200, answer.text
    return int(answer.headers["Upload-Offset"])


def tus_headers(stack: DrillStack, offset: int) -> dict[str, str]:
    return {
        "Authorization": f"Token {stack.token}",
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }


@pytest.mark.parametrize("part", ["agent", "web"])
def test_an_upload_survives_a_killed_agent_or_web_process(
    drill_stack: DrillStack, part: str, volume_name: str
) -> None:
    stack = drill_stack
    stack.start()
    data = os.urandom(SIZE)
    created = stack.api(
        "POST",
        "/api/v1/uploads/",
        json={"host": stack.host_id, "pool": "default", "name": volume_name, "length": SIZE},
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    killed = {"at": 0}

    def body() -> Iterator[bytes]:
        for start in range(0, SIZE, PIECE):
            if start == SIZE // 2:
                killed["at"] = start
                stack.kill(part)
                time.sleep(0.5)
            yield data[start : start + PIECE]

    try:
        answer = requests.patch(stack.url + location, data=body(), headers=tus_headers(stack, 0), timeout=60)
        assert answer.status_code >= 500, answer.text  # the host or the console went away mid-body
    except requests.ConnectionError:
        pass  # the web process died with the request
    assert killed["at"] == SIZE // 2
    wait_for(lambda: stack.state()["parts"][part]["state"] == "running", f"{part} running again", timeout=60)
    stack.wait_healthy(timeout=60)

    # Where the host is, then the rest from there (a client retries until the agent answers).
    deadline = time.monotonic() + 60
    while True:
        try:
            kept = head(stack, location)
            break
        except AssertionError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert 0 <= kept <= SIZE // 2 + PIECE, kept
    rest = requests.patch(
        stack.url + location, data=data[kept:], headers=tus_headers(stack, kept), timeout=60
    )
    assert rest.status_code == 204, rest.text
    assert int(rest.headers["Upload-Offset"]) == SIZE

    shown = stack.api("GET", location).json()
    assert shown["state"] == "complete" and shown["sha256"] == hashlib.sha256(data).hexdigest(), shown
    assert (POOL_DIR / volume_name).read_bytes() == data
    assert not [p.name for p in POOL_DIR.glob(f".domus-upload-{shown['id'].replace('-', '')}*")]
    audit = stack.api("GET", "/api/v1/audit/?action=media.upload.complete").json()["results"]
    assert len([e for e in audit if e["changes"].get("upload") == shown["id"].replace("-", "")]) == 1
