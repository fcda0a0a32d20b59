"""Virtual networks through the agent's HTTP API and client, on libvirt's test driver: their life
(define, start, stop, autostart, DHCP, delete), retries, refusals by field, networks in use by a
running domain, a domain's network cards, and the fresh resources that follow each operation.

The test driver has a network "default" (NAT, virbr0, 192.168.122.1/24, running) and a running
domain "test" with a card on it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter

from agent.client import AgentClient, AgentConflict, AgentInvalid, AgentNotFound
from agent.events import EventHub
from agent.protocol import (
    AgentEvent,
    DhcpHost,
    DhcpSettings,
    DomainSpec,
    InventoryEvent,
    KernelBoot,
    NetworkInfo,
    NetworkResult,
    NetworkSpec,
    NicInfo,
    NicSpec,
    StatsEvent,
)
from tests.agent.conftest import RunningAgent
from tests.agent.test_pools_api import _stats_until

pytestmark = pytest.mark.asyncio
EVENT = TypeAdapter(AgentEvent)
PUBLISHED = "published fresh resources after network changes"  # the agent's log, per publication
_subnets = iter(range(10, 250))


@pytest.fixture
async def client(test_agent: RunningAgent) -> AsyncIterator[AgentClient]:
    async with AgentClient(test_agent.url, test_agent.secret, timeout=30) as c:
        yield c


def nat_spec(**changes: Any) -> NetworkSpec:
    """A NAT network under a name and a subnet of its own (the test driver's state lives as long
    as the agent), with a range and a static host."""
    net = next(_subnets)
    fields: dict[str, Any] = {
        "name": f"net-{uuid.uuid4().hex[:6]}",
        "mode": "nat",
        "ipv4": f"10.{net}.0.1/24",
        "dhcp_start": f"10.{net}.0.100",
        "dhcp_end": f"10.{net}.0.200",
        "hosts": [{"mac": "52:54:00:00:00:01", "ip": f"10.{net}.0.10", "name": "web"}],
    }
    return NetworkSpec.model_validate({**fields, **changes})


async def raw(agent: RunningAgent, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {agent.secret}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.request(method, agent.url + path, **kwargs) as resp:
            return resp.status, await resp.json()


async def listed(client: AgentClient, name: str) -> NetworkInfo | None:
    resources = (await client.host()).resources
    assert resources is not None
    return next((n for n in resources.networks if n.name == name), None)


async def test_a_network_through_its_life(client: AgentClient) -> None:
    spec = nat_spec(ipv6="fd00:10::1/64", bridge=f"vb{uuid.uuid4().hex[:6]}")
    defined = await client.define_network(spec)
    assert defined.detail == f"network {spec.name!r}: defined, started, set to start with the host"
    network = defined.network
    assert network == NetworkInfo(
        name=spec.name,
        active=True,
        forward="nat",
        bridge=spec.bridge,
        autostart=True,
        persistent=True,
        ipv4=spec.ipv4,
        ipv6="fd00:10::1/64",
        dhcp_start=spec.dhcp_start,
        dhcp_end=spec.dhcp_end,
        hosts=spec.hosts,
    )
    assert await listed(client, spec.name) == network  # the host's resources say the same

    stopped = await client.network_action(spec.name, "stop")
    assert stopped.detail == f"network {spec.name!r} stopped"
    assert stopped.network is not None and stopped.network.active is False
    again = await client.network_action(spec.name, "stop")  # a retry: nothing to do
    assert again.detail == f"network {spec.name!r} was already stopped"
    started = await client.network_action(spec.name, "start")
    assert started.detail == f"network {spec.name!r} started"
    assert started.network is not None and started.network.active is True
    assert (
        await client.network_action(spec.name, "start")
    ).detail == f"network {spec.name!r} was already running"

    off = await client.set_network_autostart(spec.name, False)
    assert off.detail == f"network {spec.name!r} no longer starts with the host"
    assert off.network is not None and off.network.autostart is False
    on = await client.set_network_autostart(spec.name, True)
    assert on.network is not None and on.network.autostart is True

    deleted = await client.delete_network(spec.name)
    assert (deleted.network, deleted.detail) == (None, f"network {spec.name!r}: stopped, undefined")
    assert await listed(client, spec.name) is None
    with pytest.raises(AgentNotFound, match=f"no network {spec.name!r} on this host"):
        await client.delete_network(spec.name)


async def test_every_mode_defines(client: AgentClient) -> None:
    net = next(_subnets)
    specs = [
        NetworkSpec(name=f"route-{uuid.uuid4().hex[:6]}", mode="route", ipv4=f"10.{net}.0.1/24"),
        NetworkSpec(name=f"open-{uuid.uuid4().hex[:6]}", mode="open", ipv4=f"10.{net}.1.1/24"),
        NetworkSpec(name=f"iso-{uuid.uuid4().hex[:6]}", mode="isolated"),
        NetworkSpec(name=f"lan-{uuid.uuid4().hex[:6]}", mode="bridge", bridge="br-lan", autostart=False),
    ]
    for spec in specs:
        result = await client.define_network(spec)
        assert result.network is not None
        assert (result.network.forward, result.network.ipv4, result.network.forward_dev) == (
            spec.mode,
            spec.ipv4,
            spec.forward_dev,
        )
        assert result.network.autostart == spec.autostart
    resources = (await client.host()).resources
    assert resources is not None
    assert {n.name for n in resources.networks} >= {s.name for s in specs}
    for spec in specs:
        await client.delete_network(spec.name)


async def test_dhcp_while_stopped_then_live(client: AgentClient) -> None:
    spec = nat_spec(start=False, autostart=False)
    defined = await client.define_network(spec)
    assert defined.detail == f"network {spec.name!r}: defined"
    assert defined.network is not None and defined.network.active is False
    assert spec.ipv4 is not None
    prefix = spec.ipv4.rsplit(".", 1)[0]  # 10.N.0

    web = DhcpHost(mac="52:54:00:00:00:01", ip=f"{prefix}.11", name="web")  # moved to .11
    db = DhcpHost(mac="52:54:00:00:00:02", ip=f"{prefix}.12")
    stopped = DhcpSettings(dhcp_start=f"{prefix}.50", dhcp_end=f"{prefix}.99", hosts=[web, db])
    result = await client.update_network_dhcp(spec.name, stopped)
    assert result.detail == (
        f"network {spec.name!r}: DHCP range {prefix}.50 to {prefix}.99, 2 static host(s); "
        "in effect when it starts (it is stopped)"
    )
    assert result.network is not None
    assert (result.network.dhcp_start, result.network.dhcp_end, result.network.hosts) == (
        f"{prefix}.50",
        f"{prefix}.99",
        [web, db],
    )

    await client.network_action(spec.name, "start")
    live = DhcpSettings(dhcp_start=f"{prefix}.50", dhcp_end=f"{prefix}.99", hosts=[db])
    result = await client.update_network_dhcp(spec.name, live)
    assert result.detail == (
        f"network {spec.name!r}: DHCP range {prefix}.50 to {prefix}.99, 1 static host(s); "
        "in effect now and from its next start"
    )
    assert result.network is not None and result.network.hosts == [db]
    assert (await listed(client, spec.name)) == result.network
    same = await client.update_network_dhcp(spec.name, live)  # a retry: nothing to do
    assert same.detail == f"network {spec.name!r}: DHCP unchanged"

    none = await client.update_network_dhcp(spec.name, DhcpSettings())
    assert none.network is not None
    assert (none.network.dhcp_start, none.network.dhcp_end, none.network.hosts) == (None, None, [])
    assert none.detail.startswith(f"network {spec.name!r}: DHCP no range, 0 static host(s); in effect now")
    await client.delete_network(spec.name)


async def test_dhcp_refusals_name_the_field(test_agent: RunningAgent, client: AgentClient) -> None:
    spec = nat_spec()
    await client.define_network(spec)
    try:
        # The body alone is wrong: refused as every body is.
        status, body = await raw(
            test_agent, "PUT", f"/v1/networks/{spec.name}/dhcp", json={"dhcp_start": "10.0.0.5"}
        )
        assert status == 400 and body == {
            "error": "invalid_spec",
            "detail": "dhcp_end: a DHCP range needs both ends",
        }
        # Wrong for this network's subnet: the agent says which field, as for a spec.
        with pytest.raises(AgentInvalid) as info:
            await client.update_network_dhcp(
                spec.name,
                DhcpSettings(
                    dhcp_start="192.168.7.10",
                    dhcp_end="192.168.7.20",
                    hosts=[DhcpHost(mac="52:54:00:00:00:07", ip="192.168.7.7")],
                ),
            )
        assert spec.ipv4 is not None
        subnet = spec.ipv4.rsplit(".", 1)[0] + ".0/24"
        assert info.value.detail == (
            f"dhcp_start: must be a host address in {subnet}; "
            f"dhcp_end: must be a host address in {subnet}; "
            f"hosts.0: 192.168.7.7 must be a guest's address in {subnet}"
        )
        # Nothing was changed.
        assert (await listed(client, spec.name)) == (await client.define_network(spec)).network
    finally:
        await client.delete_network(spec.name)
    bridged = NetworkSpec(name=f"lan-{uuid.uuid4().hex[:6]}", mode="bridge", bridge="br-x")
    await client.define_network(bridged)
    try:
        with pytest.raises(AgentInvalid, match="dhcp_start: DHCP needs an IPv4 address on the network"):
            await client.update_network_dhcp(
                bridged.name, DhcpSettings(dhcp_start="10.0.0.2", dhcp_end="10.0.0.9")
            )
        assert (await client.update_network_dhcp(bridged.name, DhcpSettings())).detail == (
            f"network {bridged.name!r}: DHCP unchanged"
        )
    finally:
        await client.delete_network(bridged.name)


async def test_defining_the_same_network_again_answers_it_as_it_is(
    test_agent: RunningAgent, client: AgentClient
) -> None:
    spec = nat_spec()
    body = json.loads(spec.model_dump_json())
    status, first = await raw(test_agent, "POST", "/v1/networks", json=body)
    assert status == 201 and first["network"]["name"] == spec.name
    # A retry without an idempotency key (a job that lost its answer): the same network, untouched.
    status, second = await raw(test_agent, "POST", "/v1/networks", json=body)
    assert status == 200 and second["detail"] == f"network {spec.name!r} is already defined"
    assert second["network"] == first["network"]
    await client.set_network_autostart(spec.name, False)
    again = await client.define_network(spec)
    assert again.network is not None and again.network.autostart is False  # as it is, not as asked
    await client.delete_network(spec.name)


async def test_another_network_under_the_same_name_is_a_conflict(client: AgentClient) -> None:
    spec = nat_spec()
    await client.define_network(spec)
    try:
        with pytest.raises(AgentConflict) as info:
            await client.define_network(spec.model_copy(update={"mode": "route", "hosts": []}))
        assert info.value.detail == (
            f"network {spec.name!r} already exists with another definition "
            f"(mode nat, not route; hosts 52:54:00:00:00:01={spec.hosts[0].ip}, not none)"
        )
    finally:
        await client.delete_network(spec.name)


async def test_a_spec_the_agent_refuses_names_the_field(test_agent: RunningAgent) -> None:
    """The agent validates with the same NetworkSpec the console uses, and says which field."""
    cases = [
        (
            {"name": "refused", "mode": "nat"},
            "ipv4: required in nat mode: the host's address on it, such as 192.168.150.1/24",
        ),
        (
            {"name": "refused", "mode": "bridge", "bridge": "br0", "ipv4": "10.1.1.1/24"},
            "ipv4: not used in bridge mode: leave it out",
        ),
        (
            {"name": "refused", "mode": "isolated", "ipv4": "10.1.1.1/24", "dhcp_start": "10.1.2.1"},
            "dhcp_end: a DHCP range needs both ends",
        ),
        (
            {"name": "bad name", "mode": "isolated"},
            "name: String should match pattern '^[A-Za-z0-9_.-]{1,64}$'",
        ),
    ]
    for body, detail in cases:
        status, answer = await raw(test_agent, "POST", "/v1/networks", json=body)
        assert (status, answer) == (400, {"error": "invalid_spec", "detail": detail}), body
    status, answer = await raw(
        test_agent, "POST", "/v1/networks/default/autostart", json={"autostart": "maybe"}
    )
    assert status == 400 and answer["detail"].startswith("autostart: ")


async def test_what_another_network_has_is_refused_by_field(client: AgentClient) -> None:
    """The test driver's "default" has virbr0 and 192.168.122.0/24."""
    with pytest.raises(AgentInvalid) as info:
        await client.define_network(
            nat_spec(ipv4="192.168.122.129/25", dhcp_start=None, dhcp_end=None, hosts=[])
        )
    assert info.value.detail == (
        "ipv4: 192.168.122.128/25 overlaps the subnet of network 'default' (192.168.122.1/24); "
        "each network needs a subnet of its own"
    )
    with pytest.raises(AgentInvalid) as info:
        await client.define_network(nat_spec(bridge="virbr0"))
    assert info.value.detail == "bridge: 'virbr0' is already the bridge of network 'default'"
    spec = nat_spec(ipv6="fd00:99::1/64")
    await client.define_network(spec)
    try:
        with pytest.raises(AgentInvalid) as info:
            await client.define_network(
                NetworkSpec(name=f"v6-{uuid.uuid4().hex[:6]}", mode="isolated", ipv6="fd00:99::2/64")
            )
        assert info.value.detail.startswith(
            f"ipv6: fd00:99::/64 overlaps the subnet of network {spec.name!r} (fd00:99::1/64)"
        )
    finally:
        await client.delete_network(spec.name)


async def test_unknown_networks_are_not_found(test_agent: RunningAgent, client: AgentClient) -> None:
    for action in ("start", "stop"):
        with pytest.raises(AgentNotFound, match="no network 'no-such-net' on this host"):
            await client.network_action("no-such-net", action)
    with pytest.raises(AgentNotFound):
        await client.set_network_autostart("no-such-net", True)
    with pytest.raises(AgentNotFound):
        await client.update_network_dhcp("no-such-net", DhcpSettings())
    with pytest.raises(AgentNotFound):
        await client.delete_network("no-such-net")
    with pytest.raises(AgentNotFound, match="not a valid network name"):
        await client.network_action("bad name!", "start")
    with pytest.raises(AgentNotFound, match="not a valid network name"):
        await client.delete_network("..")
    status, body = await raw(test_agent, "DELETE", "/v1/networks/bad%20name")
    assert status == 404 and body == {
        "error": "not_found",
        "detail": "no network 'bad name' (not a valid network name)",
    }
    with pytest.raises(ValueError):
        await client.network_action("default", "refresh")  # type: ignore[arg-type]


async def test_a_network_a_running_domain_uses_is_neither_stopped_nor_deleted(client: AgentClient) -> None:
    spec = nat_spec()
    await client.define_network(spec)
    web = DomainSpec(
        uuid=uuid.uuid4(),
        name=f"web-{uuid.uuid4().hex[:6]}",
        memory_mib=64,
        boot=KernelBoot(kernel="vmlinuz"),
        nics=[NicSpec(source="network", name=spec.name, mac="52:54:00:12:34:56", model="virtio")],
    )
    await client.define(web)
    try:
        info = await client.get_domain(web.uuid)
        # (The test driver names the card's host side, vnet-like, even while the domain is off.)
        assert [nic.model_copy(update={"target": None}) for nic in info.nics] == [
            NicInfo(mac="52:54:00:12:34:56", source="network", name=spec.name, model="virtio")
        ]
        await client.start(web.uuid)
        refusals: list[tuple[Callable[[], Awaitable[NetworkResult]], str]] = [
            (lambda: client.network_action(spec.name, "stop"), "stopping"),
            (lambda: client.delete_network(spec.name), "deleting"),
        ]
        for refused, doing in refusals:
            with pytest.raises(AgentConflict) as conflict:
                await refused()
            assert conflict.value.detail == (
                f"network {spec.name!r} is used by running domain(s) {web.name}: shut them off, "
                f"or move their network cards to another network, before {doing} it"
            )
        listed_network = await listed(client, spec.name)
        assert listed_network is not None and listed_network.active  # refused before anything was done
        await client.destroy(web.uuid)
        # A defined domain that is shut off holds nothing up.
        assert (await client.network_action(spec.name, "stop")).detail == f"network {spec.name!r} stopped"
        assert (await client.delete_network(spec.name)).detail == f"network {spec.name!r}: undefined"
    finally:
        await client.delete(web.uuid, delete_disks=True)
        try:
            await client.delete_network(spec.name)
        except AgentNotFound:
            pass


async def test_the_test_driver_s_own_network_and_domain(client: AgentClient) -> None:
    default = await listed(client, "default")
    assert default == NetworkInfo(
        name="default",
        active=True,
        forward="nat",
        bridge="virbr0",
        persistent=True,
        ipv4="192.168.122.1/24",
        dhcp_start="192.168.122.2",
        dhcp_end="192.168.122.254",
    )
    test = next(d for d in await client.list_domains() if d.name == "test")
    assert test.nics == [
        NicInfo(mac="aa:bb:cc:dd:ee:ff", source="network", name="default", target="testnet0")
    ]
    with pytest.raises(AgentConflict, match=r"network 'default' is used by running domain\(s\) test: "):
        await client.network_action("default", "stop")


async def test_each_settings_change_is_its_own_request_under_one_job(test_agent: RunningAgent) -> None:
    """Two DHCP changes by one job (one idempotency prefix) are two requests, not a replay."""
    spec = nat_spec(hosts=[])
    async with AgentClient(test_agent.url, test_agent.secret, idempotency_key=f"job-{uuid.uuid4()}") as job:
        await job.define_network(spec)
        assert spec.dhcp_start is not None and spec.dhcp_end is not None
        host = DhcpHost(mac="52:54:00:00:00:05", ip=spec.dhcp_start.rsplit(".", 1)[0] + ".5")
        one = await job.update_network_dhcp(
            spec.name, DhcpSettings(dhcp_start=spec.dhcp_start, dhcp_end=spec.dhcp_end, hosts=[host])
        )
        two = await job.update_network_dhcp(
            spec.name, DhcpSettings(dhcp_start=spec.dhcp_start, dhcp_end=spec.dhcp_end)
        )
        assert one.network is not None and one.network.hosts == [host]
        assert two.network is not None and two.network.hosts == []
        off = await job.set_network_autostart(spec.name, False)
        on = await job.set_network_autostart(spec.name, True)
        assert off.network is not None and on.network is not None
        assert (off.network.autostart, on.network.autostart) == (False, True)
        assert (await job.delete_network(spec.name)).network is None


# -- fresh resources after each operation ----------------------------------------------------------
def _network_in(name: str, resources: Any) -> NetworkInfo | None:
    return next((n for n in resources.networks if n.name == name), None)


async def test_each_operation_is_followed_by_fresh_resources(
    test_agent: RunningAgent, client: AgentClient
) -> None:
    """After each operation the agent publishes fresh resources itself (it logs each time), not
    only when its periodic stats come round: autostart and DHCP changes are no libvirt events."""
    spec = nat_spec(autostart=False, hosts=[])
    steps: list[tuple[Any, Any]] = [
        (lambda: client.define_network(spec), lambda n: n is not None and n.active),
        (lambda: client.set_network_autostart(spec.name, True), lambda n: n is not None and n.autostart),
        (
            lambda: client.update_network_dhcp(spec.name, DhcpSettings()),
            lambda n: n is not None and n.dhcp_start is None,
        ),
        (lambda: client.network_action(spec.name, "stop"), lambda n: n is not None and not n.active),
        (lambda: client.delete_network(spec.name), lambda n: n is None),
    ]
    async with client.events() as ws:
        msg = await asyncio.wait_for(ws.receive(), timeout=10)
        assert isinstance(EVENT.validate_python(json.loads(msg.data)), InventoryEvent)
        for operation, shows in steps:
            published = test_agent.log().count(PUBLISHED)
            await operation()
            await _stats_until(ws, lambda r, shows=shows: shows(_network_in(spec.name, r)))
            await test_agent.log_count_exceeds(PUBLISHED, published)
    assert f"network {spec.name} started" in test_agent.log()  # libvirt's event was heard too


async def _settled(hub: EventHub) -> None:
    task = hub._pools_task
    assert task is not None
    await task


async def test_network_and_pool_changes_share_one_reading(caplog: pytest.LogCaptureFixture) -> None:
    hub = EventHub()
    hub.pool_debounce_s = 0.0
    calls: list[bool] = []

    async def stats(refreshed_only: bool) -> StatsEvent:
        calls.append(refreshed_only)
        return StatsEvent(ts=0.0, free_memory_mib=1, domains_total=0, domains_running=0, resources=None)

    hub.pool_stats = stats
    sub = hub.subscribe()
    with caplog.at_level("INFO", logger="agent.events"):
        hub.networks_changed()
        hub.pools_changed(refreshed_only=True)
        await _settled(hub)
        hub.networks_changed()
        await _settled(hub)
    assert calls == [False, False]  # a network change is never "only refreshes"
    assert sub.queue.qsize() == 2
    published = [r.getMessage() for r in caplog.records if r.getMessage().startswith("published")]
    assert published == [
        "published fresh resources after storage pool changes",  # one reading, said for each kind
        "published fresh resources after network changes",
        "published fresh resources after network changes",
    ]
