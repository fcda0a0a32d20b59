"""The agent's HTTP API against libvirt's test driver, through the real process and client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agent.client import (
    AgentClient,
    AgentConflict,
    AgentInvalid,
    AgentNotFound,
    AgentUnauthorized,
    AgentUnreachable,
)
from agent.protocol import DiskSpec, DomainSpec, IsoBoot, KernelBoot
from tests.agent.conftest import RunningAgent, free_port

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def client(test_agent: RunningAgent) -> AsyncIterator[AgentClient]:
    async with AgentClient(test_agent.url, test_agent.secret, timeout=30) as c:
        yield c


def kernel_spec(name: str, *, disks: int = 0, **boot: Any) -> DomainSpec:
    return DomainSpec(
        uuid=uuid.uuid4(),
        name=name,
        memory_mib=64,
        disks=[DiskSpec(size_gib=1) for _ in range(disks)],
        boot=KernelBoot(**({"kernel": "vmlinuz", "initrd": "initrd.img"} | boot)),
    )


async def raw(agent: RunningAgent, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, agent.url + path, **kwargs) as resp:
            return resp.status, await resp.json()


async def test_banner(test_agent: RunningAgent) -> None:
    assert test_agent.banner == f"domus-agent listening on {test_agent.url}"


async def test_health_needs_no_auth(test_agent: RunningAgent) -> None:
    status, body = await raw(test_agent, "GET", "/v1/health")
    assert status == 200 and body["ok"] is True and body["version"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic x", "Bearer "])
async def test_auth_refused(test_agent: RunningAgent, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    status, body = await raw(test_agent, "GET", "/v1/domains", headers=headers)
    assert status == 401
    assert body["error"] == "unauthorized" and body["detail"]


async def test_client_unauthorized(test_agent: RunningAgent) -> None:
    async with AgentClient(test_agent.url, "nope") as c:
        with pytest.raises(AgentUnauthorized) as info:
            await c.host()
    assert info.value.status == 401 and info.value.code == "unauthorized"


async def test_client_unreachable() -> None:
    async with AgentClient(f"http://127.0.0.1:{free_port()}", "x", timeout=5) as c:
        with pytest.raises(AgentUnreachable) as info:
            await c.health()
    assert "unreachable" in info.value.detail


async def test_unknown_route_is_a_problem(test_agent: RunningAgent) -> None:
    headers = {"Authorization": f"Bearer {test_agent.secret}"}
    status, body = await raw(test_agent, "GET", "/v1/nope", headers=headers)
    assert status == 404 and body["error"] == "not_found"


async def test_host_facts(client: AgentClient, test_agent: RunningAgent) -> None:
    facts = await client.host()
    assert facts.hypervisor == "test" and facts.accel == "test"
    assert facts.uri == "test:///default"
    assert facts.cpus > 0 and facts.memory_mib > 0
    assert facts.libvirt_version.count(".") == 2
    assert facts.default_pool_path == str(test_agent.pool_dir)
    assert facts.kvm_usable is False
    assert facts.capabilities is not None and facts.resources is not None
    modes = {m.mode: m for m in facts.capabilities.modes}
    assert modes["hvm"].available and not modes["pv"].available and "Xen" in modes["pv"].note
    pools = {p.name: p for p in facts.resources.pools}
    assert pools["default"].path == str(test_agent.pool_dir) and pools["default"].active
    assert "default" in {n.name for n in facts.resources.networks}
    refreshed = await client.host_refresh()
    assert refreshed.capabilities == facts.capabilities


async def test_stats_arrive_on_the_events_socket(client: AgentClient) -> None:
    """Every STATS_EVERY_S, listeners get free memory, domain counts and pools (patched short)."""
    async with client.events() as ws:
        kinds = []
        while "stats" not in kinds:
            msg = await asyncio.wait_for(ws.receive_json(), timeout=15)
            kinds.append(msg["type"])
            if msg["type"] == "stats":
                assert msg["domains_total"] >= 1 and msg["free_memory_mib"] > 0
                assert msg["resources"]["pools"]
    assert kinds[0] == "inventory" and "heartbeat" in kinds


async def test_define_is_idempotent(client: AgentClient, test_agent: RunningAgent) -> None:
    spec = kernel_spec("idem", disks=2, cmdline="console=ttyS0")
    first = await client.define(spec)
    again = await client.define(spec)
    assert first == again
    assert first.uuid == spec.uuid and first.state == "shutoff"
    assert first.memory_mib == 64 and first.vcpus == 1
    assert [(d.target, d.device) for d in first.disks] == [("vda", "disk"), ("vdb", "disk")]
    assert first.disks[0].path == str(test_agent.pool_dir / f"idem-{spec.uuid.hex[:8]}-disk0.qcow2")
    assert first.disks[1].path == str(test_agent.pool_dir / f"idem-{spec.uuid.hex[:8]}-disk1.qcow2")
    assert spec.uuid in {d.uuid for d in await client.list_domains()}
    assert await client.get_domain(spec.uuid) == first
    await client.delete(spec.uuid, delete_disks=True)


async def test_define_status_codes(test_agent: RunningAgent) -> None:
    spec = kernel_spec("codes")
    headers = {"Authorization": f"Bearer {test_agent.secret}"}
    body = spec.model_dump(mode="json")
    assert (await raw(test_agent, "POST", "/v1/domains", json=body, headers=headers))[0] == 201
    assert (await raw(test_agent, "POST", "/v1/domains", json=body, headers=headers))[0] == 200
    await raw(test_agent, "DELETE", f"/v1/domains/{spec.uuid}", headers=headers)


async def test_iso_boot(client: AgentClient, test_agent: RunningAgent) -> None:
    spec = DomainSpec(
        uuid=uuid.uuid4(), name="iso", disks=[DiskSpec(size_gib=2)], boot=IsoBoot(iso="install.iso")
    )
    info = await client.define(spec)
    assert [(d.target, d.device) for d in info.disks] == [("vda", "disk"), ("hda", "cdrom")]
    assert info.disks[1].path == str(test_agent.pool_dir / "install.iso")
    result = await client.delete(spec.uuid, delete_disks=True)
    assert result.deleted_volumes == [str(test_agent.pool_dir / f"iso-{spec.uuid.hex[:8]}-disk0.qcow2")]
    assert (test_agent.pool_dir / "install.iso").exists()


async def test_a_reused_name_gets_a_fresh_volume(client: AgentClient, test_agent: RunningAgent) -> None:
    """DELETE keeps disks by default: a new domain reusing the name must not attach the old disk."""
    old = kernel_spec("reused", disks=1)
    old_info = await client.define(old)
    old_path = old_info.disks[0].path
    kept = await client.delete(old.uuid, delete_disks=False)
    assert kept.kept_volumes == [old_path] and kept.deleted_volumes == []

    new = kernel_spec("reused", disks=1)
    new_info = await client.define(new)
    assert new_info.name == old_info.name and new_info.uuid != old_info.uuid
    assert new_info.disks[0].path == str(test_agent.pool_dir / f"reused-{new.uuid.hex[:8]}-disk0.qcow2")
    assert new_info.disks[0].path != old_path
    assert await client.define(new) == new_info  # a retry still reuses its own volume
    result = await client.delete(new.uuid, delete_disks=True)
    assert result.deleted_volumes == [new_info.disks[0].path]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name!"}, "name"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": 1}, "memory_mib"),
        ({"disks": [{"size_gib": -1}]}, "disks.0.size_gib"),
        ({"boot": {}}, "boot"),
        ({"colour": "red"}, "colour"),
        ({"uuid": "not-a-uuid"}, "uuid"),
    ],
)
async def test_invalid_spec_names_the_field(
    test_agent: RunningAgent, body: dict[str, Any], field: str
) -> None:
    good = kernel_spec("valid").model_dump(mode="json")
    headers = {"Authorization": f"Bearer {test_agent.secret}"}
    status, problem = await raw(test_agent, "POST", "/v1/domains", json=good | body, headers=headers)
    assert status == 400 and problem["error"] == "invalid_spec"
    assert problem["detail"].startswith(field) or f"; {field}" in problem["detail"], problem


async def test_body_not_json(test_agent: RunningAgent) -> None:
    headers = {"Authorization": f"Bearer {test_agent.secret}"}
    status, problem = await raw(test_agent, "POST", "/v1/domains", data=b"{nope", headers=headers)
    assert status == 400 and problem["error"] == "invalid_spec"


@pytest.mark.parametrize(
    ("boot", "field", "why"),
    [
        ({"kernel": "/etc/passwd"}, "boot.kernel", "not inside"),
        ({"kernel": "vmlinuz", "initrd": "/etc/shadow"}, "boot.initrd", "not inside"),
        ({"kernel": "missing-vmlinuz"}, "boot.kernel", "does not exist"),
        ({"iso": "/etc/passwd"}, "boot.iso", "not inside"),
    ],
)
async def test_boot_paths_are_confined(
    client: AgentClient, boot: dict[str, str], field: str, why: str
) -> None:
    body = IsoBoot(**boot) if "iso" in boot else KernelBoot(**boot)
    spec = DomainSpec(uuid=uuid.uuid4(), name="escape", boot=body)
    with pytest.raises(AgentInvalid) as info:
        await client.define(spec)
    assert info.value.detail.startswith(field) and why in info.value.detail
    with pytest.raises(AgentNotFound):
        await client.get_domain(spec.uuid)


@pytest.mark.parametrize(
    "boot",
    [
        {"kind": "kernel", "kernel": "../outside"},
        {"kind": "kernel", "kernel": "vmlinuz", "initrd": "../../../../etc/shadow"},
        {"kind": "iso", "iso": "../outside"},
    ],
)
async def test_dotdot_paths_are_refused_before_any_lookup(
    test_agent: RunningAgent, boot: dict[str, str]
) -> None:
    body = kernel_spec("escape").model_dump(mode="json") | {"boot": boot}
    headers = {"Authorization": f"Bearer {test_agent.secret}"}
    status, problem = await raw(test_agent, "POST", "/v1/domains", json=body, headers=headers)
    assert status == 400 and problem["error"] == "invalid_spec"
    assert "boot." in problem["detail"] and "must not contain '..'" in problem["detail"], problem


async def test_symlink_escape_is_refused(client: AgentClient, test_agent: RunningAgent) -> None:
    link = test_agent.pool_dir / "sneaky"
    link.symlink_to(test_agent.pool_dir.parent / "outside")
    try:
        with pytest.raises(AgentInvalid, match=r"boot\.kernel"):
            await client.define(kernel_spec("sneaky", kernel="sneaky", initrd=None))
    finally:
        link.unlink()


async def test_unknown_pool(client: AgentClient) -> None:
    spec = kernel_spec("nopool")
    spec.disks = [DiskSpec(size_gib=1, pool="nope")]
    with pytest.raises(AgentInvalid, match=r"disks\.0\.pool"):
        await client.define(spec)


async def test_name_clash_is_a_conflict(client: AgentClient) -> None:
    spec = kernel_spec("clash")
    await client.define(spec)
    try:
        with pytest.raises(AgentConflict, match="name"):
            await client.define(kernel_spec("clash"))
    finally:
        await client.delete(spec.uuid, delete_disks=True)


async def test_unknown_uuid_is_404(client: AgentClient) -> None:
    unknown = uuid.uuid4()
    calls = (client.get_domain, client.start, client.shutdown, client.destroy)
    for call in (*calls, client.suspend, client.resume, client.reboot):
        with pytest.raises(AgentNotFound):
            await call(unknown)
    with pytest.raises(AgentNotFound):
        await client.delete(unknown, delete_disks=True)


async def test_lifecycle_is_idempotent(client: AgentClient) -> None:
    spec = kernel_spec("life", disks=1)
    await client.define(spec)
    try:
        assert (await client.start(spec.uuid)).state == "running"
        assert (await client.start(spec.uuid)).state == "running"
        assert (await client.destroy(spec.uuid)).state == "shutoff"
        assert (await client.destroy(spec.uuid)).state == "shutoff"
        assert (await client.shutdown(spec.uuid)).state == "shutoff"
        await client.start(spec.uuid)
        # The test driver shuts a domain down at once on an ACPI request.
        assert (await client.shutdown(spec.uuid)).state in ("shutoff", "shutdown", "running")
    finally:
        await client.delete(spec.uuid, delete_disks=True)


async def test_delete_keeps_or_deletes_disks(client: AgentClient, test_agent: RunningAgent) -> None:
    spec = kernel_spec("keep", disks=1)
    info = await client.define(spec)
    await client.start(spec.uuid)
    kept = await client.delete(spec.uuid, delete_disks=False)  # running: destroyed first
    assert kept.kept_volumes == [info.disks[0].path] and kept.deleted_volumes == []
    with pytest.raises(AgentNotFound):
        await client.get_domain(spec.uuid)
    # A retried define of the same name reuses the kept volume, then deleting removes it.
    again = await client.define(spec)
    assert again.disks[0].path == info.disks[0].path
    gone = await client.delete(spec.uuid, delete_disks=True)
    assert gone.deleted_volumes == [info.disks[0].path]
    # Boot files are never deleted.
    assert (test_agent.pool_dir / "vmlinuz").exists() and (test_agent.pool_dir / "initrd.img").exists()


async def test_pause_resume_reboot(client: AgentClient) -> None:
    spec = kernel_spec("pausable", disks=0)
    await client.define(spec)
    try:
        with pytest.raises(AgentConflict, match="not running, so it cannot be paused"):
            await client.suspend(spec.uuid)
        with pytest.raises(AgentConflict, match="not running, so it cannot be rebooted"):
            await client.reboot(spec.uuid)
        await client.start(spec.uuid)
        assert (await client.suspend(spec.uuid)).state == "paused"
        assert (await client.suspend(spec.uuid)).state == "paused"  # a retried job: no error
        with pytest.raises(AgentConflict, match="cannot be rebooted"):
            await client.reboot(spec.uuid)
        assert (await client.resume(spec.uuid)).state == "running"
        assert (await client.resume(spec.uuid)).state == "running"
        assert (await client.reboot(spec.uuid)).state == "running"
        await client.destroy(spec.uuid)
        with pytest.raises(AgentConflict, match="not paused, so it cannot be resumed"):
            await client.resume(spec.uuid)
    finally:
        await client.delete(spec.uuid, delete_disks=True)


async def test_autostart(client: AgentClient) -> None:
    spec = kernel_spec("autostarted", disks=0)
    assert (await client.define(spec)).autostart is False
    try:
        assert (await client.set_autostart(spec.uuid, True)).autostart is True
        listed = {d.uuid: d for d in await client.list_domains()}
        assert listed[spec.uuid].autostart is True  # the cached listing saw the change
        assert (await client.set_autostart(spec.uuid, False)).autostart is False
    finally:
        await client.delete(spec.uuid, delete_disks=True)


async def test_resources_apply_at_next_boot_when_off_and_now_when_possible(client: AgentClient) -> None:
    spec = kernel_spec("resize")
    await client.define(spec)
    off = await client.set_resources(spec.uuid, memory_mib=128, vcpus=2)
    assert (off.memory, off.vcpus) == ("next boot", "next boot")
    assert (off.domain.memory_mib, off.domain.vcpus) == (128, 2)
    await client.start(spec.uuid)
    fewer = await client.set_resources(spec.uuid, vcpus=1)
    assert fewer.vcpus == "now" and fewer.memory == "unchanged" and fewer.domain.vcpus == 1
    more = await client.set_resources(spec.uuid, memory_mib=4096)
    assert more.memory == "next boot" and "next boot" in more.detail  # above what it started with
    await client.delete(spec.uuid, delete_disks=True)


async def test_rename_only_while_shut_off(client: AgentClient) -> None:
    spec = kernel_spec("old-name")
    other = kernel_spec("taken")
    await client.define(spec)
    await client.define(other)
    renamed = await client.rename(spec.uuid, "new-name")
    assert renamed.name == "new-name" and renamed.uuid == spec.uuid
    assert await client.rename(spec.uuid, "new-name") == renamed  # a retry is a no-op
    with pytest.raises(AgentConflict, match="already used"):
        await client.rename(spec.uuid, "taken")
    await client.start(spec.uuid)
    with pytest.raises(AgentConflict, match="shut it off"):
        await client.rename(spec.uuid, "running-name")
    for uid in (spec.uuid, other.uuid):
        await client.delete(uid, delete_disks=True)
