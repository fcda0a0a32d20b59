from __future__ import annotations

from typing import Any

from domains.models import Domain


def flat_addresses(addresses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every address of every card of a domain, IPv4 first: what a list's cell shows."""
    rows = [
        {**address, "mac": nic.get("mac", "")} for nic in addresses for address in nic.get("addresses") or []
    ]
    return sorted(rows, key=lambda a: a.get("family") != "ipv4")


def domain_event(domain: Domain) -> dict[str, Any]:
    return {
        "type": "domain.state",
        "domain": {
            "id": domain.pk,
            "uuid": str(domain.uuid),
            "name": domain.name,
            "host": domain.host_id,
            "team": domain.team_id,
            "state": domain.state,
            "state_label": domain.get_state_display(),
            "vcpus": domain.vcpus,
            "memory_mib": domain.memory_mib,
            "autostart": domain.autostart,
            "failure": domain.failure,
            "addresses": [
                {k: a.get(k) for k in ("address", "prefix", "family", "source", "mac")}
                for a in flat_addresses(domain.addresses)
            ],
        },
    }


def domain_deleted_event(*, domain_id: int, name: str, host_id: int, team_id: int | None) -> dict[str, Any]:
    return {
        "type": "domain.deleted",
        "domain": {"id": domain_id, "name": name, "host": host_id, "team": team_id},
    }
