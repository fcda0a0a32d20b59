"""Storage pools through the agent's HTTP API and client, on libvirt's test driver: every pool
type (the real thing needs NFS servers, iSCSI targets, LVM and ZFS, none of which this machine
has), the refusals, and the events that follow an operation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter

from agent.client import AgentClient, AgentConflict, AgentInvalid, AgentNotFound
from agent.protocol import (
    POOL_TYPES,
    AgentEvent,
    DiskSpec,
    DomainSpec,
    HeartbeatEvent,
    InventoryEvent,
    KernelBoot,
    PoolInfo,
    PoolSpec,
    StatsEvent,
)
from tests.agent.conftest import RunningAgent
from tests.agent.test_pools import CASES

pytestmark = pytest.mark.asyncio
EVENT = TypeAdapter(AgentEvent)
PUBLISHED = "published fresh resources after storage pool changes"  # the agent's log, per publication

# What the console shows of where each pool's storage is.
SOURCES = {
    "dir": "",
    "fs": "/dev/sdb1",
    "netfs_nfs": "nfs.example.com:/export/vms",
    "netfs_cifs": "smb.example.com:vmshare",
    "logical": "vg_vms (/dev/sdc, /dev/sdd)",
    "logical_existing": "vg_vms",
    "disk": "/dev/sde",
    "iscsi": "san.example.com/iqn.2013-06.com.example:vms",
    "scsi": "host0",
    "zfs": "tank (/dev/sdf)",
    "gluster": "gluster.example.com:/gv0/vms",
}


@pytest.fixture
async def client(test_agent: RunningAgent) -> AsyncIterator[AgentClient]:
    async with AgentClient(test_agent.url, test_agent.secret, timeout=30) as c:
        yield c


def pool_spec(case: str, **changes: Any) -> PoolSpec:
    """A CASES spec under a name of its own (the test driver's state lives as long as the agent)."""
    return PoolSpec.model_validate({"name": f"api-{case}-{uuid.uuid4().hex[:6]}", **CASES[case], **changes})


async def raw(agent: RunningAgent, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {agent.secret}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.request(method, agent.url + path, **kwargs) as resp:
            return resp.status, await resp.json()


async def listed(client: AgentClient, name: str) -> PoolInfo | None:
    resources = (await client.host()).resources
    assert resources is not None
    return next((p for p in resources.pools if p.name == name), None)


@pytest.mark.parametrize("case", sorted(SOURCES))
async def test_every_pool_type_defines_runs_and_goes(client: AgentClient, case: str) -> None:
    spec = pool_spec(case)
    result = await client.define_pool(spec)
    pool = result.pool
    assert pool is not None
    assert (pool.name, pool.type, pool.state, pool.active) == (spec.name, spec.type, "running", True)
    assert (pool.autostart, pool.persistent, pool.volume_count) == (True, True, 0)
    assert pool.source == SOURCES[case]
    assert ("built" in result.detail) == spec.build and "started" in result.detail
    assert await listed(client, spec.name) == pool  # the host's resources say the same

    stopped = await client.pool_action(spec.name, "stop")
    assert stopped.pool is not None and (stopped.pool.state, stopped.pool.active) == ("inactive", False)
    assert stopped.pool.volume_count is None  # unknown while inactive
    started = await client.pool_action(spec.name, "start")
    assert started.pool is not None and started.pool.state == "running"

    deleted = await client.delete_pool(spec.name, delete_storage=spec.build)
    assert deleted.pool is None
    assert deleted.detail == (
        f"storage pool {spec.name!r}: stopped, storage deleted, undefined"
        if spec.build
        else f"storage pool {spec.name!r}: stopped, undefined"
    )
    assert await listed(client, spec.name) is None


async def test_the_test_driver_runs_every_type(client: AgentClient) -> None:
    resources = (await client.host()).resources
    assert resources is not None and resources.pool_types == list(POOL_TYPES)


async def test_define_without_start_then_start_refresh_autostart(client: AgentClient) -> None:
    spec = pool_spec("netfs_nfs", build=False, start=False, autostart=False)
    result = await client.define_pool(spec)
    assert result.pool is not None and (result.pool.state, result.pool.autostart) == ("inactive", False)
    assert result.detail == f"storage pool {spec.name!r}: defined"
    with pytest.raises(AgentConflict, match="is not running: start it to refresh it"):
        await client.pool_action(spec.name, "refresh")
    assert (await client.pool_action(spec.name, "start")).detail == f"storage pool {spec.name!r} started"
    again = await client.pool_action(spec.name, "start")  # a retry: nothing to do
    assert again.detail == f"storage pool {spec.name!r} was already running"
    refreshed = await client.pool_action(spec.name, "refresh")
    assert refreshed.pool is not None and refreshed.pool.volume_count == 0
    on = await client.set_pool_autostart(spec.name, True)
    assert on.pool is not None and on.pool.autostart is True
    off = await client.set_pool_autostart(spec.name, False)
    assert off.pool is not None and off.pool.autostart is False
    await client.delete_pool(spec.name)


async def test_defining_the_same_pool_again_answers_it_as_it_is(
    test_agent: RunningAgent, client: AgentClient
) -> None:
    spec = pool_spec("logical_existing")
    body = json.loads(spec.model_dump_json())
    status, first = await raw(test_agent, "POST", "/v1/pools", json=body)
    assert status == 201 and first["pool"]["name"] == spec.name
    # A retry without an idempotency key (a job that lost its answer): the same pool, untouched.
    status, second = await raw(test_agent, "POST", "/v1/pools", json=body)
    assert status == 200 and second["detail"] == f"storage pool {spec.name!r} is already defined"
    assert second["pool"] == first["pool"]
    await client.set_pool_autostart(spec.name, False)
    assert (await client.define_pool(spec)).pool.autostart is False  # type: ignore[union-attr]
    await client.delete_pool(spec.name)


async def test_another_pool_under_the_same_name_is_a_conflict(client: AgentClient) -> None:
    spec = pool_spec("dir")
    await client.define_pool(spec)
    try:
        with pytest.raises(AgentConflict) as info:
            await client.define_pool(spec.model_copy(update={"target_path": "/srv/elsewhere"}))
        assert info.value.detail == (
            f"storage pool {spec.name!r} already exists with another definition "
            "(target path /srv/pools/vms, not /srv/elsewhere)"
        )
        with pytest.raises(
            AgentConflict, match=f"storage pool {spec.name!r} already exists.*type dir, not netfs"
        ):
            await client.define_pool(PoolSpec.model_validate({**CASES["netfs_nfs"], "name": spec.name}))
    finally:
        await client.delete_pool(spec.name, delete_storage=True)


async def test_unknown_pools_are_not_found(test_agent: RunningAgent, client: AgentClient) -> None:
    for action in ("start", "stop", "refresh"):
        with pytest.raises(AgentNotFound, match="no storage pool 'no-such-pool' on this host"):
            await client.pool_action("no-such-pool", action)  # type: ignore[arg-type]
    with pytest.raises(AgentNotFound):
        await client.set_pool_autostart("no-such-pool", True)
    with pytest.raises(AgentNotFound):
        await client.delete_pool("no-such-pool")
    with pytest.raises(AgentNotFound, match="not a valid pool name"):
        await client.pool_action("bad name!", "start")
    status, body = await raw(test_agent, "POST", "/v1/pools/bad%20name/delete", json={})
    assert status == 404 and body["error"] == "not_found"


async def test_a_spec_the_agent_refuses_names_the_field(test_agent: RunningAgent) -> None:
    """The agent validates with the same PoolSpec the console uses, and says which field."""
    status, body = await raw(
        test_agent,
        "POST",
        "/v1/pools",
        json={"name": "refused", "type": "dir", "target_path": "/srv/x", "source_host": "nfs.example.com"},
    )
    assert status == 400 and body == {
        "error": "invalid_spec",
        "detail": "source_host: not used by a pool of type dir: leave it out",
    }
    status, body = await raw(test_agent, "POST", "/v1/pools", json={"name": "refused", "type": "iscsi"})
    assert status == 400
    assert body["detail"] == (
        "source_host: required for a pool of type iscsi; source_name: required for a pool of type iscsi"
    )
    status, body = await raw(test_agent, "POST", "/v1/pools/default/autostart", json={"autostart": "maybe"})
    assert status == 400 and body["detail"].startswith("autostart: ")
    status, body = await raw(test_agent, "POST", "/v1/pools/default/delete", json={"delete_disks": True})
    assert status == 400 and body["detail"].startswith("delete_disks: ")


def kernel_domain(name: str, pool: str) -> DomainSpec:
    return DomainSpec(
        uuid=uuid.uuid4(),
        name=name,
        memory_mib=64,
        disks=[DiskSpec(size_gib=1, pool=pool)],
        boot=KernelBoot(kernel="vmlinuz", initrd="initrd.img"),
    )


async def test_a_pool_in_use_is_neither_stopped_nor_deleted(client: AgentClient) -> None:
    # LVM: deleting its storage (vgremove -f) would take the volumes along, so it is refused too.
    spec = pool_spec("logical_existing", source_name=f"vg_{uuid.uuid4().hex[:6]}")
    await client.define_pool(spec)
    web = kernel_domain(f"web-{uuid.uuid4().hex[:6]}", spec.name)
    db = kernel_domain(f"db-{uuid.uuid4().hex[:6]}", spec.name)
    users = ", ".join(sorted([web.name, db.name]))
    await client.define(web)
    await client.define(db)
    try:
        await client.start(web.uuid)
        with pytest.raises(AgentConflict) as info:
            await client.pool_action(spec.name, "stop")
        # Only the running one keeps it from stopping.
        assert (
            info.value.detail
            == f"storage pool {spec.name!r} is used by {web.name}: shut them off before stopping it"
        )
        with pytest.raises(AgentConflict) as info:
            await client.delete_pool(spec.name)
        assert info.value.detail == (
            f"storage pool {spec.name!r} is used by {users}: delete those domains, or their disks in it, first"
        )
        await client.destroy(web.uuid)
        stopped = await client.pool_action(spec.name, "stop")  # nothing running uses it now
        assert stopped.pool is not None and stopped.pool.state == "inactive"
        with pytest.raises(AgentConflict, match=f"is used by {users}:"):  # defined ones still do
            await client.delete_pool(spec.name, delete_storage=True)
        await client.pool_action(spec.name, "start")
        await client.delete(web.uuid, delete_disks=True)
        await client.delete(db.uuid, delete_disks=False)  # keeps its volume in the pool
        with pytest.raises(AgentConflict) as info:
            await client.delete_pool(spec.name, delete_storage=True)
        assert info.value.detail == (
            f"storage pool {spec.name!r} still holds 1 volume(s): delete them first, "
            "or delete the pool without its storage"
        )
        assert (await client.pool_action(spec.name, "refresh")).pool.volume_count == 1  # type: ignore[union-attr]
        assert (await client.delete_pool(spec.name)).pool is None
    finally:
        for dom in (web, db):
            try:
                await client.delete(dom.uuid, delete_disks=False)
            except AgentNotFound:
                pass
        try:
            await client.delete_pool(spec.name)
        except AgentNotFound:
            pass


async def test_storage_made_elsewhere_is_not_deleted(client: AgentClient) -> None:
    spec = pool_spec("iscsi")
    await client.define_pool(spec)
    with pytest.raises(
        AgentInvalid, match="delete_storage: the storage of a pool of type iscsi is not this host's"
    ):
        await client.delete_pool(spec.name, delete_storage=True)
    listed_pool = await listed(client, spec.name)
    assert listed_pool is not None and listed_pool.state == "running"  # refused before anything was done
    await client.delete_pool(spec.name)


async def _stats_until(ws: aiohttp.ClientWebSocketResponse, wanted: Any) -> StatsEvent:
    """The first StatsEvent for which `wanted(resources)` holds (each read bounded by 10 s)."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        event = EVENT.validate_python(json.loads(msg.data))
        if isinstance(event, StatsEvent) and event.resources is not None and wanted(event.resources):
            return event
        assert isinstance(event, (StatsEvent, HeartbeatEvent)) or event.type == "domain", event


def _pool_in(name: str, resources: Any) -> PoolInfo | None:
    return next((p for p in resources.pools if p.name == name), None)


async def test_each_operation_is_followed_by_fresh_resources(
    test_agent: RunningAgent, client: AgentClient
) -> None:
    """After each operation the agent publishes fresh resources itself (it logs each time), not
    only when its periodic stats come round: autostart, for one, is no libvirt event at all."""
    spec = pool_spec("logical", autostart=False)
    steps: list[tuple[Any, Any]] = [
        (lambda: client.define_pool(spec), lambda p: p is not None and p.state == "running"),
        (lambda: client.set_pool_autostart(spec.name, True), lambda p: p is not None and p.autostart),
        (lambda: client.pool_action(spec.name, "stop"), lambda p: p is not None and p.state == "inactive"),
        (lambda: client.delete_pool(spec.name, delete_storage=True), lambda p: p is None),
    ]
    async with client.events() as ws:
        msg = await asyncio.wait_for(ws.receive(), timeout=10)
        assert isinstance(EVENT.validate_python(json.loads(msg.data)), InventoryEvent)
        for operation, shows in steps:
            published = test_agent.log().count(PUBLISHED)
            await operation()
            await _stats_until(ws, lambda r, shows=shows: shows(_pool_in(spec.name, r)))
            await test_agent.log_count_exceeds(PUBLISHED, published)


async def test_a_mounted_pool_s_storage_is_its_mount_point(client: AgentClient) -> None:
    """Deleting an NFS pool's storage removes its mount point, never what the server holds: the
    volumes left in it do not stop it (they would stop an LVM or directory pool)."""
    spec = pool_spec("netfs_nfs", build=False)
    await client.define_pool(spec)
    leftover = kernel_domain(f"left-{uuid.uuid4().hex[:6]}", spec.name)
    await client.define(leftover)
    await client.delete(leftover.uuid, delete_disks=False)
    assert (await client.pool_action(spec.name, "refresh")).pool.volume_count == 1  # type: ignore[union-attr]
    deleted = await client.delete_pool(spec.name, delete_storage=True)
    assert deleted.detail == f"storage pool {spec.name!r}: stopped, storage deleted, undefined"
