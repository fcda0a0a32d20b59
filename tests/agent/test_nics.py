"""A domain's network cards after define: attach, detach, change (link, network or bridge, MAC).

Without a daemon: what is pending between a running domain's two definitions, the model a new
card gets, the changed <interface> elements (libvirt's schema). On libvirt's test driver, through
the agent's HTTP API: the test driver has no device calls at all, so a shut-off domain's
definition is rewritten (all there is: "now") and a running one's change goes to its next boot
and shows as pending; the refusals, each naming its field; retried attaches answered as they
are. The real guest is tests/agent/test_nics_real.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from lxml import etree
from pydantic import BaseModel, ValidationError

from agent.client import AgentClient, AgentConflict, AgentInvalid, AgentNotFound
from agent.domain_nics import changed_card, new_card_model
from agent.domxml import nic_element
from agent.netxml import domain_nics
from agent.protocol import (
    DomainInfo,
    DomainSpec,
    KernelBoot,
    NetworkSpec,
    NicAttachRequest,
    NicChangeRequest,
    NicInfo,
    NicSpec,
)
from tests.agent.conftest import RunningAgent
from tests.agent.test_domxml import _validate, needs_validator

MAC_A, MAC_B, MAC_C = "52:54:00:20:00:0a", "52:54:00:20:00:0b", "52:54:00:20:00:0c"


# -- the XML, without a daemon -----------------------------------------------------------------
def _card(
    mac: str,
    source: str = "network",
    name: str = "lab",
    *,
    model: str = "virtio",
    slot: int = 0,
    **extra: str,
) -> str:
    where = f"<source {source}='{name}'/>"
    link = f"<link state='{extra['link']}'/>" if "link" in extra else ""
    address = (
        f"<address type='pci' domain='0x0000' bus='0x01' slot='{slot:#04x}' function='0x0'/>" if slot else ""
    )
    target = f"<target dev='{extra['target']}'/>" if "target" in extra else ""
    return (
        f"<interface type='{source}'><mac address='{mac}'/>{where}{target}<model type='{model}'/>{link}"
        f"{address}</interface>"
    )


def _domain(
    *cards: str, running: bool = False, domain_type: str = "kvm", os_type: str = "hvm"
) -> etree._Element:
    id_attr = " id='7'" if running else ""
    xml = (
        f"<domain type='{domain_type}'{id_attr}><name>web</name><memory>65536</memory>"
        f"<os><type arch='x86_64'>{os_type}</type></os><devices>{''.join(cards)}</devices></domain>"
    )
    return etree.fromstring(xml.encode())


def test_what_the_next_boot_changes_is_pending() -> None:
    live = _domain(
        _card(MAC_A, target="vnet0"),
        _card("52:54:00:20:00:01", target="vnet1"),  # on another network next boot
        _card("52:54:00:20:00:02", target="vnet2"),  # link down next boot
        _card("52:54:00:20:00:03", target="vnet3"),  # leaving
        _card("52:54:00:20:00:04", slot=7, target="vnet4"),  # its MAC changed behind the agent's back
        _card("52:54:00:20:00:05", model="virtio", target="vnet5"),  # another model next boot
        running=True,
    )
    config = _domain(
        _card(MAC_A),
        _card("52:54:00:20:00:01", "bridge", "br0"),
        _card("52:54:00:20:00:02", link="down"),
        _card("52:54:00:20:00:99", slot=7),
        _card("52:54:00:20:00:05", model="e1000"),
        _card(MAC_B, target="vnet9"),  # new (the test driver writes a target in a definition)
    )
    nics = domain_nics(live, config)
    assert [(n.mac, n.source, n.name, n.link, n.target, n.pending) for n in nics] == [
        (MAC_A, "network", "lab", "up", "vnet0", None),
        ("52:54:00:20:00:01", "network", "lab", "up", "vnet1", "change"),  # the running guest's
        ("52:54:00:20:00:02", "network", "lab", "up", "vnet2", "change"),
        ("52:54:00:20:00:03", "network", "lab", "up", "vnet3", "detach"),
        ("52:54:00:20:00:04", "network", "lab", "up", "vnet4", "change"),
        ("52:54:00:20:00:05", "network", "lab", "up", "vnet5", "change"),
        (MAC_B, "network", "lab", "up", None, "attach"),  # no host side before it is plugged
    ]
    # Nothing differs: nothing pending (a host-side interface name is no difference).
    assert domain_nics(live, live) == domain_nics(live)


def test_a_new_card_s_model() -> None:
    e1000 = _domain(_card(MAC_A, model="e1000"))
    assert (
        new_card_model(e1000, None) == "e1000"
    )  # as the domain's other cards: a guest without virtio drivers
    assert new_card_model(e1000, "virtio") == "virtio"
    assert new_card_model(_domain(), None) == "virtio"
    assert new_card_model(_domain(domain_type="xen"), None) == "netfront"
    assert new_card_model(_domain(domain_type="xen"), "e1000") == "e1000"
    assert new_card_model(_domain(domain_type="xen", os_type="xen"), None) is None  # PV: Xen's netfront only
    assert new_card_model(_domain(domain_type="xen", os_type="xenpvh"), "e1000") is None
    assert new_card_model(_domain(), "netfront") == "virtio"


def _holding(*cards: etree._Element) -> str:
    root = etree.fromstring(
        b"<domain type='kvm'><name>web</name><memory>65536</memory>"
        b"<os><type arch='x86_64'>hvm</type></os><devices/></domain>"
    )
    devices = root.find("devices")
    assert devices is not None
    for card in cards:
        devices.append(card)
    return etree.tostring(root, encoding="unicode")


LIVE_CARD = """
<interface type='network'>
  <mac address='52:54:00:20:00:0a'/>
  <source network='lab' portid='9b2a4a1e-0b1c-4c1c-9a50-7c0b5d1e0f00' bridge='virbr-lab'/>
  <target dev='vnet3'/>
  <model type='virtio'/>
  <alias name='net1'/>
  <address type='pci' domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>
</interface>
"""


@needs_validator
@pytest.mark.parametrize(
    "request_",
    [
        NicChangeRequest(link="down"),
        NicChangeRequest(source="bridge", name="br0"),
        NicChangeRequest(source="network", name="other", link="up"),
        NicChangeRequest(mac=MAC_B),
    ],
    ids=["link", "bridge", "network-and-link", "mac"],
)
def test_a_changed_card_keeps_the_rest_of_it(request_: NicChangeRequest, tmp_path: Path) -> None:
    live = etree.fromstring(LIVE_CARD.encode())
    new = changed_card(live, request_)
    assert new is not None

    def attr(tag: str, name: str) -> str | None:
        element = new.find(tag)
        return element.get(name) if element is not None else None

    info = domain_nics(etree.fromstring(_holding(new).encode()))[0]
    if request_.link is not None:
        assert info.link == request_.link and attr("link", "state") == request_.link
    if request_.source is not None:
        assert (info.source, info.name) == (request_.source, request_.name)
        # A fresh <source>: no port or bridge of the network it leaves.
        assert [dict(e.attrib) for e in new.iterfind("source")] == [{request_.source: request_.name}]
        assert new.get("type") == request_.source
    assert info.mac == (request_.mac or MAC_A)
    # What libvirt matches a running card by stays: its alias, slot and host-side interface.
    assert attr("alias", "name") == "net1" and attr("address", "bus") == "0x07"
    assert attr("target", "dev") == "vnet3" and info.model == "virtio"
    assert changed_card(new, request_) is None  # asked again: nothing to change
    document = tmp_path / "domain.xml"
    document.write_text(_holding(new))
    assert _validate(document) is None


@needs_validator
@pytest.mark.parametrize(
    ("source", "model"), [("network", "virtio"), ("bridge", "e1000e"), ("network", None)]
)
def test_an_attached_card_passes_libvirt_schema(source: str, model: str | None, tmp_path: Path) -> None:
    card = nic_element(NicSpec(source=source, name="lab-1.x", mac=MAC_A), model)  # type: ignore[arg-type]
    document = tmp_path / "domain.xml"
    document.write_text(_holding(card))
    assert _validate(document) is None
    assert [s.get(source) for s in card.iterfind("source")] == ["lab-1.x"]
    assert [m.get("type") for m in card.iterfind("model")] == ([model] if model else [])


def test_the_requests() -> None:
    attach = NicAttachRequest.model_validate(
        {"nic": {"source": "bridge", "name": "br0", "mac": "52-54-00-AB-CD-EF"}}
    )
    assert attach.nic.mac == "52:54:00:ab:cd:ef"
    again = NicAttachRequest.model_validate(attach.model_dump(mode="json", exclude_defaults=True))
    assert again == attach  # what the console stores in a job and reads back
    refused: list[tuple[type[BaseModel], dict[str, object], str]] = [
        (NicAttachRequest, {"nic": {"name": "default"}}, "nic.mac: required"),
        (NicAttachRequest, {"nic": {"mac": "53:54:00:00:00:01"}}, "unicast"),
        (NicAttachRequest, {"nic": {"mac": MAC_A, "model": "ne2k"}}, "model"),
        (NicChangeRequest, {}, "say what to change"),
        (NicChangeRequest, {"source": "network"}, "source and name go together"),
        (NicChangeRequest, {"name": "lab"}, "source and name go together"),
        (NicChangeRequest, {"mac": "zz"}, "six hex pairs"),
        (NicChangeRequest, {"link": "sideways"}, "link"),
        (NicChangeRequest, {"link": "up", "bogus": 1}, "bogus"),
    ]
    for model, body, message in refused:
        with pytest.raises(ValidationError, match=re.escape(message)):
            model.model_validate(body)


# -- the API on libvirt's test driver ----------------------------------------------------------
TEST_DOMAIN = uuid.UUID("6695eb01-f6a4-8304-79aa-97f2502e193f")  # the test driver's "test", running
TEST_MAC = "aa:bb:cc:dd:ee:ff"  # its one card, on "default"
NO_DEVICE_CALLS = "this function is not supported by the connection driver"


@pytest.fixture
async def client(test_agent: RunningAgent) -> AsyncIterator[AgentClient]:
    async with AgentClient(test_agent.url, test_agent.secret, timeout=30) as agent:
        yield agent


def _nics(info: DomainInfo) -> list[tuple[str, str, str, str | None, str, str | None]]:
    return [(n.mac, n.source, n.name, n.model, n.link, n.pending) for n in info.nics]


def _one(info: DomainInfo, mac: str) -> NicInfo:
    [nic] = [n for n in info.nics if n.mac == mac]
    return nic


async def _defined(client: AgentClient, *nics: NicSpec) -> DomainSpec:
    spec = DomainSpec(
        uuid=uuid.uuid4(),
        name=f"nics-{uuid.uuid4().hex[:6]}",
        memory_mib=64,
        nics=list(nics),
        boot=KernelBoot(kernel="vmlinuz"),
    )
    await client.define(spec)
    return spec


async def test_a_shut_off_domain_s_cards(client: AgentClient) -> None:
    spec = await _defined(client, NicSpec(name="default", mac=MAC_A, model="e1000"))
    try:
        attached = await client.attach_nic(
            spec.uuid, NicAttachRequest(nic=NicSpec(source="bridge", name="br0", mac=MAC_B))
        )
        assert (attached.mac, attached.applied) == (MAC_B, "now")
        assert attached.detail == f"{MAC_B} attached (bridge 'br0'): the guest has it from its next start"
        # The model of the domain's other card (its guest may have no virtio driver); nothing pending.
        assert _nics(attached.domain) == [
            (MAC_A, "network", "default", "e1000", "up", None),
            (MAC_B, "bridge", "br0", "e1000", "up", None),
        ]
        # A retried job whose answer was lost (the agent restarted): the same card, answered.
        again = await client.attach_nic(
            spec.uuid, NicAttachRequest(nic=NicSpec(source="bridge", name="br0", mac=MAC_B))
        )
        assert (again.applied, again.detail) == ("now", f"{MAC_B} is already attached")
        assert again.domain.nics == attached.domain.nics
        with pytest.raises(AgentConflict) as caught:  # the MAC on another source: another card
            await client.attach_nic(spec.uuid, NicAttachRequest(nic=NicSpec(name="default", mac=MAC_B)))
        assert (
            caught.value.detail == f"nic.mac: {spec.name} already has a card with MAC {MAC_B} (bridge 'br0')"
        )

        # The MAC, while shut off; not one another card has.
        with pytest.raises(AgentConflict) as caught:
            await client.change_nic(spec.uuid, MAC_B, NicChangeRequest(mac=MAC_A))
        assert caught.value.detail == f"mac: {spec.name} already has a card with MAC {MAC_A}"
        moved = await client.change_nic(
            spec.uuid, MAC_B, NicChangeRequest(mac=MAC_C, source="network", name="default")
        )
        assert (moved.mac, moved.applied, moved.detail) == (
            MAC_C,
            "now",
            f"{MAC_B}: on network 'default', MAC {MAC_C}",
        )
        assert _nics(moved.domain)[1] == (MAC_C, "network", "default", "e1000", "up", None)
        with pytest.raises(AgentNotFound, match=f"{spec.name} has no network card {MAC_B}"):
            await client.change_nic(spec.uuid, MAC_B, NicChangeRequest(link="down"))
        down = await client.change_nic(spec.uuid, MAC_C, NicChangeRequest(link="down"))
        assert (down.applied, _one(down.domain, MAC_C).link) == ("now", "down")
        same = await client.change_nic(spec.uuid, MAC_C, NicChangeRequest(link="down"))
        assert same.detail == f"nothing to change: {MAC_C} is as asked (link down)"

        detached = await client.detach_nic(spec.uuid, MAC_C)
        assert (detached.mac, detached.applied, detached.detail) == (MAC_C, "now", f"{MAC_C} detached")
        assert [n.mac for n in detached.domain.nics] == [MAC_A]
        with pytest.raises(AgentNotFound, match=f"{spec.name} has no network card {MAC_C}"):
            await client.detach_nic(spec.uuid, MAC_C)
        assert [n.mac for n in (await client.get_domain(spec.uuid)).nics] == [MAC_A]
    finally:
        await client.delete(spec.uuid, delete_disks=True)


async def test_a_running_domain_s_cards_wait_for_its_next_boot(client: AgentClient) -> None:
    """The test driver cannot change a running guest: each change goes to the next boot, says
    why, and shows as pending until the domain starts again."""
    spec = await _defined(client, NicSpec(name="default", mac=MAC_A, model="virtio"))
    try:
        await client.start(spec.uuid)
        attached = await client.attach_nic(
            spec.uuid, NicAttachRequest(nic=NicSpec(name="default", mac=MAC_B))
        )
        assert (attached.mac, attached.applied) == (MAC_B, "next boot")
        assert attached.detail.startswith(f"the running guest cannot take {MAC_B} now ({NO_DEVICE_CALLS}")
        assert attached.detail.endswith("): it is attached from the next boot")
        assert _nics(attached.domain) == [
            (MAC_A, "network", "default", "virtio", "up", None),
            (MAC_B, "network", "default", "virtio", "up", "attach"),
        ]
        assert _one(attached.domain, MAC_B).target is None
        again = await client.attach_nic(spec.uuid, NicAttachRequest(nic=NicSpec(name="default", mac=MAC_B)))
        assert (again.applied, again.detail) == (
            "next boot",
            f"{MAC_B} is already attached from the next boot",
        )
        assert len(again.domain.nics) == 2

        with pytest.raises(AgentConflict) as caught:
            await client.change_nic(spec.uuid, MAC_A, NicChangeRequest(mac=MAC_C))
        assert caught.value.detail == f"mac: {spec.name} is running: shut it off first to change a card's MAC"
        down = await client.change_nic(spec.uuid, MAC_A, NicChangeRequest(link="down"))
        assert down.applied == "next boot" and NO_DEVICE_CALLS in down.detail
        assert down.detail.endswith("): link down from the next boot")
        assert _one(down.domain, MAC_A).pending == "change" and _one(down.domain, MAC_A).link == "up"
        # A card only in the next boot's definition: changed there, which is all it has.
        later = await client.change_nic(spec.uuid, MAC_B, NicChangeRequest(source="bridge", name="br9"))
        assert later.applied == "now"
        assert _nics(later.domain)[1] == (MAC_B, "bridge", "br9", "virtio", "up", "attach")

        leaving = await client.detach_nic(spec.uuid, MAC_A)
        assert leaving.applied == "next boot"
        assert leaving.detail.startswith(f"the running guest cannot release {MAC_A} now ({NO_DEVICE_CALLS}")
        assert _one(leaving.domain, MAC_A).pending == "detach"
        with pytest.raises(AgentConflict) as caught:  # its MAC is the running guest's until then
            await client.attach_nic(spec.uuid, NicAttachRequest(nic=NicSpec(name="default", mac=MAC_A)))
        assert "removed from its next boot: choose another MAC" in caught.value.detail
        assert _nics(await client.get_domain(spec.uuid)) == _nics(leaving.domain)

        await client.destroy(spec.uuid)
        restarted = await client.start(spec.uuid)  # the next boot: what was pending is what it has
        assert _nics(restarted) == [(MAC_B, "bridge", "br9", "virtio", "up", None)]
    finally:
        await client.destroy(spec.uuid)
        await client.delete(spec.uuid, delete_disks=True)


async def test_refusals_name_their_field(client: AgentClient, test_agent: RunningAgent) -> None:
    nobody = uuid.uuid4()
    card = NicAttachRequest(nic=NicSpec(name="default", mac=MAC_C))
    with pytest.raises(AgentNotFound, match=f"no domain with uuid {nobody}"):
        await client.attach_nic(nobody, card)
    with pytest.raises(AgentNotFound):
        await client.detach_nic(nobody, MAC_C)
    with pytest.raises(AgentNotFound):
        await client.change_nic(nobody, MAC_C, NicChangeRequest(link="up"))
    with pytest.raises(AgentNotFound) as missing:
        await client.detach_nic(TEST_DOMAIN, MAC_C)
    assert missing.value.detail == f"test has no network card {MAC_C}"
    with pytest.raises(AgentNotFound, match="a card is named by its MAC, such as 52:54:00:12:34:56"):
        await client.detach_nic(TEST_DOMAIN, "52:54:00:12:34")
    with pytest.raises(AgentNotFound, match="a card is named by its MAC"):
        await client.change_nic(TEST_DOMAIN, "eth0", NicChangeRequest(link="up"))

    with pytest.raises(AgentInvalid) as invalid:
        await client.attach_nic(TEST_DOMAIN, NicAttachRequest(nic=NicSpec(name="nope", mac=MAC_C)))
    assert invalid.value.detail == "nic.name: this host has no network 'nope' (its networks: default)"
    with pytest.raises(AgentInvalid) as invalid:
        await client.change_nic(TEST_DOMAIN, TEST_MAC, NicChangeRequest(source="network", name="nope"))
    assert invalid.value.detail == "name: this host has no network 'nope' (its networks: default)"
    with pytest.raises(AgentConflict) as conflict:  # the test domain's own card, on another network
        await client.attach_nic(
            TEST_DOMAIN, NicAttachRequest(nic=NicSpec(name="other", mac=TEST_MAC.upper()))
        )
    assert (
        conflict.value.detail == f"nic.mac: test already has a card with MAC {TEST_MAC} (network 'default')"
    )
    # Its own card as it is: the same card.
    same = await client.attach_nic(TEST_DOMAIN, NicAttachRequest(nic=NicSpec(name="default", mac=TEST_MAC)))
    assert (same.applied, same.detail) == ("now", f"{TEST_MAC} is already attached")

    # A network that is not running: not for a running domain's card ...
    idle = f"idle-{uuid.uuid4().hex[:6]}"
    await client.define_network(NetworkSpec(name=idle, mode="isolated", start=False, autostart=False))
    try:
        with pytest.raises(AgentConflict) as conflict:
            await client.attach_nic(TEST_DOMAIN, NicAttachRequest(nic=NicSpec(name=idle, mac=MAC_C)))
        assert (
            conflict.value.detail == f"nic.name: network {idle!r} is not running, and test is: start it first"
        )
        with pytest.raises(AgentConflict) as conflict:
            await client.change_nic(TEST_DOMAIN, TEST_MAC, NicChangeRequest(source="network", name=idle))
        assert conflict.value.detail == f"name: network {idle!r} is not running, and test is: start it first"
        assert _nics(await client.get_domain(TEST_DOMAIN)) == [
            (TEST_MAC, "network", "default", None, "up", None)
        ]
        # ... but a shut-off domain's card may be on it: the network is started with the domain.
        spec = await _defined(client)
        try:
            added = await client.attach_nic(spec.uuid, NicAttachRequest(nic=NicSpec(name=idle, mac=MAC_C)))
            assert added.applied == "now" and _nics(added.domain) == [
                (MAC_C, "network", idle, "virtio", "up", None)
            ]
        finally:
            await client.delete(spec.uuid, delete_disks=True)
    finally:
        await client.delete_network(idle)

    headers = {"Authorization": f"Bearer {test_agent.secret}"}
    async with aiohttp.ClientSession(headers=headers) as http:  # the body is checked before anything is done
        url = f"{test_agent.url}/v1/domains/{TEST_DOMAIN}/nics"
        async with http.post(url, json={"nic": {"name": "default"}}) as resp:
            assert resp.status == 400 and "nic.mac: required" in (await resp.json())["detail"]
        async with http.patch(f"{url}/{TEST_MAC}", json={}) as resp:
            assert resp.status == 400 and "say what to change" in (await resp.json())["detail"]
        async with http.patch(f"{url}/{TEST_MAC.upper()}", json={"mac": "52:54:00:00:00:01"}) as resp:
            assert resp.status == 409, await resp.text()  # the MAC in the URL in either case


async def test_a_retried_job_is_answered_from_memory(test_agent: RunningAgent, client: AgentClient) -> None:
    spec = await _defined(client)
    try:
        job = AgentClient(test_agent.url, test_agent.secret, timeout=30, idempotency_key="job-7")
        async with job:
            first = await job.attach_nic(spec.uuid, NicAttachRequest(nic=NicSpec(name="default", mac=MAC_A)))
            assert (
                await job.attach_nic(spec.uuid, NicAttachRequest(nic=NicSpec(name="default", mac=MAC_A)))
                == first
            )
            # Two cards in one job: two requests.
            second = await job.attach_nic(spec.uuid, NicAttachRequest(nic=NicSpec(name="default", mac=MAC_B)))
            assert [n.mac for n in second.domain.nics] == [MAC_A, MAC_B]
            # Down, then up, in one job: two requests, neither answered from memory.
            down = await job.change_nic(spec.uuid, MAC_A, NicChangeRequest(link="down"))
            up = await job.change_nic(spec.uuid, MAC_A, NicChangeRequest(link="up"))
            assert (_one(down.domain, MAC_A).link, _one(up.domain, MAC_A).link) == ("down", "up")
            gone = await job.detach_nic(spec.uuid, MAC_B)
            assert await job.detach_nic(spec.uuid, MAC_B) == gone  # not a 404: from memory
        assert test_agent.log().count(f"/v1/domains/{spec.uuid}/nics/{MAC_B}/detach 200") == 2
    finally:
        await client.delete(spec.uuid, delete_disks=True)
