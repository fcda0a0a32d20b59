"""A domain's IP addresses, as its host's agent reports them (agent/addresses.py: DHCP leases of
libvirt's networks, the guest agent, the host's neighbour table). Recorded per network card on
the domain's row, with a searchable text and a sort key for the lists, and told to the pages."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.db import transaction

from agent.protocol import AddressesEvent, NicAddresses
from console.realtime.events import publish_on_commit
from domains.events import domain_event, flat_addresses
from domains.models import Domain
from hosts.models import Host

ACTIVE = (Domain.State.RUNNING, Domain.State.PAUSED, Domain.State.BLOCKED, Domain.State.PMSUSPENDED)


def sort_key(addresses: list[dict[str, Any]]) -> str:
    """The first IPv4 address, each part zero-padded ("010.001.002.003"), so that text order is
    numeric order; IPv6 after every IPv4; "" (first) when there is none."""
    for address in flat_addresses(addresses):
        try:
            ip = ipaddress.ip_address(address["address"])
        except (KeyError, ValueError):
            continue
        if ip.version == 4:
            return "4:" + ".".join(f"{int(part):03d}" for part in str(ip).split("."))
        return "6:" + ip.exploded
    return ""


def recorded(nics: list[NicAddresses]) -> dict[str, Any]:
    """The columns a domain's row keeps of its cards' addresses."""
    addresses = [nic.model_dump(mode="json") for nic in nics if nic.addresses]
    text = " ".join(a["address"] for a in flat_addresses(addresses))
    return {"addresses": addresses, "address_text": text[:1024], "address_sort": sort_key(addresses)}


@transaction.atomic
def domain_addresses_observed(*, host: Host, event: AddressesEvent) -> Domain | None:
    """Record what the host's agent says a domain's addresses are now; tell the pages if they
    changed. A domain this console does not know (yet) is left for its inventory."""
    domain = Domain.objects.select_for_update().filter(uuid=event.uuid, host=host).first()
    if domain is None:
        return None
    new = recorded(event.nics)
    if all(getattr(domain, field) == value for field, value in new.items()):
        return domain
    for field, value in new.items():
        setattr(domain, field, value)
    domain.save(update_fields=[*new, "updated_at"])
    publish_on_commit(domain_event(domain))
    return domain


@transaction.atomic
def addresses_forgotten(*, host: Host) -> None:
    """What a host's stopped domains have no more: addresses (after a reconnect, its agent says
    the running ones' again)."""
    stale = Domain.objects.filter(host=host).exclude(state__in=ACTIVE).exclude(address_text="")
    for domain in stale.select_for_update():
        domain.addresses, domain.address_text, domain.address_sort = [], "", ""
        domain.save(update_fields=["addresses", "address_text", "address_sort", "updated_at"])
        publish_on_commit(domain_event(domain))
