"""Guests' IP addresses in the console: what an agent's AddressesEvent records on a domain's row,
the live event the pages get, the lists' column, sort and search ("which guest has 10.1.2.3?"),
and the domain page. Where addresses come from (leases, the guest agent, ARP) is the agent's:
tests/agent/test_addresses*.py; a real guest's lease shown end to end is tests/e2e/test_networks.py."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from agent.protocol import AddressesEvent, NicAddress, NicAddresses
from domains.addresses import domain_addresses_observed, sort_key
from domains.models import Domain
from hosts.models import Host
from tests.console.test_access_matrix import client_for

pytestmark = pytest.mark.django_db

MAC1, MAC2 = "52:54:00:00:00:01", "52:54:00:00:00:02"


def card(mac: str, *addresses: tuple[str, str]) -> NicAddresses:
    return NicAddresses(
        mac=mac,
        addresses=[
            NicAddress(
                address=a, prefix=24 if ":" not in a else 64, family="ipv6" if ":" in a else "ipv4", source=s
            )
            for a, s in addresses
        ],
    )


def running(host: Host, name: str) -> Domain:
    return Domain.objects.create(name=name, host=host, state=Domain.State.RUNNING, uuid=uuid.uuid4())


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    from domains import addresses

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(addresses, "publish_on_commit", lambda event, *a: seen.append(event))
    return seen


def test_an_event_is_recorded_once_and_told_to_the_pages(host: Host, published: list[dict[str, Any]]) -> None:
    web = running(host, "web1")
    event = AddressesEvent(
        uuid=web.uuid, nics=[card(MAC1, ("fd00::20", "lease"), ("10.1.2.3", "lease")), card(MAC2)]
    )
    domain_addresses_observed(host=host, event=event)
    web.refresh_from_db()
    assert web.address_text == "10.1.2.3 fd00::20" and web.address_sort == "4:010.001.002.003"
    assert [n["mac"] for n in web.addresses] == [MAC1]  # a card without addresses is not kept
    (told,) = published
    assert [(a["address"], a["source"], a["mac"]) for a in told["domain"]["addresses"]] == [
        ("10.1.2.3", "lease", MAC1),
        ("fd00::20", "lease", MAC1),
    ]
    domain_addresses_observed(host=host, event=event)  # the same again: nothing to tell
    assert len(published) == 1
    domain_addresses_observed(host=host, event=AddressesEvent(uuid=web.uuid, nics=[]))  # stopped
    web.refresh_from_db()
    assert (web.addresses, web.address_text, web.address_sort) == ([], "", "")
    assert published[-1]["domain"]["addresses"] == []


def test_an_event_for_another_host_s_domain_is_ignored(host: Host, published: list[dict[str, Any]]) -> None:
    other = Host.objects.create(name="h2", url="http://127.0.0.1:9", secret="s" * 32)
    web = running(other, "web1")
    event = AddressesEvent(uuid=web.uuid, nics=[card(MAC1, ("10.1.2.3", "lease"))])
    assert domain_addresses_observed(host=host, event=event) is None
    web.refresh_from_db()
    assert web.address_text == "" and not published


def test_the_sort_key_is_numeric_ipv4_first() -> None:
    def key(*addresses: str) -> str:
        return sort_key([card(MAC1, *((a, "lease") for a in addresses)).model_dump(mode="json")])

    assert key("10.0.0.9") < key("10.0.0.10") < key("192.168.1.1") < key("fd00::1")
    assert key("fd00::1", "10.0.0.9") == key("10.0.0.9") and key() == ""


def test_the_list_searches_and_sorts_by_address(host: Host, admin_user: Any) -> None:
    for name, address in (("c", "10.0.0.10"), ("a", "10.0.0.9"), ("b", None)):
        domain = running(host, name)
        nics = [card(MAC1, (address, "arp"))] if address else []
        domain_addresses_observed(host=host, event=AddressesEvent(uuid=domain.uuid, nics=nics))
    api: APIClient = client_for(admin_user)
    found = api.get("/api/v1/domains/?q=10.0.0.10").json()["results"]
    assert [d["name"] for d in found] == ["c"]
    assert found[0]["addresses"][0]["addresses"][0] == {
        "address": "10.0.0.10",
        "prefix": 24,
        "family": "ipv4",
        "source": "arp",
    }
    assert [d["name"] for d in api.get("/api/v1/domains/?q=10.0.0.").json()["results"]] == ["a", "c"]
    ordered = [d["name"] for d in api.get("/api/v1/domains/?ordering=address").json()["results"]]
    assert ordered == ["b", "a", "c"]  # none first, then 10.0.0.9 before 10.0.0.10
    reverse = [d["name"] for d in api.get("/api/v1/domains/?ordering=-address").json()["results"]]
    assert reverse == ["c", "a", "b"]


def test_the_overview_and_the_domain_page_show_them(host: Host, admin_client: Any) -> None:
    web = running(host, "web1")
    web.nics = [{"mac": MAC1, "source": "network", "name": "default", "model": "virtio", "link": "up"}]
    web.save()
    event = AddressesEvent(uuid=web.uuid, nics=[card(MAC1, ("10.1.2.3", "agent"))])
    domain_addresses_observed(host=host, event=event)
    overview = admin_client.get("/?q=10.1.2").content.decode()
    row = overview[overview.index(f'data-domain-row="{web.pk}"') :]
    assert '<code title="agent, 52:54:00:00:00:01">10.1.2.3</code>' in row[: row.index("</tr>")]
    assert "Sort by addresses" in overview
    page = admin_client.get(f"/domains/{web.pk}/").content.decode()
    cell = page[page.index(f'data-nic-addresses="{web.pk}"') :]
    assert '10.1.2.3/24</code><span class="hint"> agent</span>' in cell[: cell.index("</td>")]


@pytest.mark.django_db(transaction=True)
def test_hostwatch_records_addresses_and_forgets_stopped_domains_on_a_reconnect(host: Host) -> None:
    from agent.protocol import DomainInfo, HostFacts, InventoryEvent
    from hosts.hostwatch import HostKey, HostWatch

    web = running(host, "web1")
    old = Domain.objects.create(
        name="old", host=host, state=Domain.State.RUNNING, uuid=uuid.uuid4(), address_text="10.9.9.9"
    )
    key = HostKey(host.pk, host.name, host.url, host.secret, "")
    watch = HostWatch()
    event = AddressesEvent(uuid=web.uuid, nics=[card(MAC1, ("10.1.2.3", "lease"))])
    asyncio.run(watch._apply(key, event, None))  # type: ignore[arg-type]
    web.refresh_from_db()
    assert web.address_text == "10.1.2.3"
    # Reconnected: "old" is shut off now; its address goes, web1's (still running) stays.
    facts = HostFacts(
        hostname="h",
        uri="test:///default",
        hypervisor="test",
        accel="test",
        arch="x86_64",
        hvm_hardware_assisted=False,
        kvm_usable=False,
        cpus=1,
        memory_mib=1024,
        free_memory_mib=512,
        libvirt_version="9.0.0",
        agent_version="0",
    )
    infos = [
        DomainInfo(uuid=web.uuid, name="web1", state="running", vcpus=1, memory_mib=256),
        DomainInfo(uuid=old.uuid, name="old", state="shutoff", vcpus=1, memory_mib=256),
    ]
    asyncio.run(watch._apply(key, InventoryEvent(host=facts, domains=infos), None))  # type: ignore[arg-type]
    old.refresh_from_db()
    web.refresh_from_db()
    assert old.address_text == "" and web.address_text == "10.1.2.3"
