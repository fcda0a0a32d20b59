from __future__ import annotations

from typing import Any

from hosts.models import Host


def _host_payload(host: Host) -> dict[str, Any]:
    return {
        "id": host.pk,
        "name": host.name,
        "state": host.state,
        "detail": host.state_detail,
        "maintenance": host.maintenance,
        "teams": list(host.teams.values_list("pk", flat=True)),  # reserved to; [] when shared
    }


def host_event(host: Host) -> dict[str, Any]:
    return {"type": "host.state", "host": _host_payload(host)}


def host_removed_event(host: Host) -> dict[str, Any]:
    """Built before the row is deleted (the payload needs its teams)."""
    return {"type": "host.removed", "host": _host_payload(host)}


def pools_summary(resources: dict[str, Any]) -> list[dict[str, Any]]:
    """What the host page shows of each pool (its offered volumes stay out: the page filters
    those per viewer)."""
    return [{k: v for k, v in pool.items() if k != "volumes"} for pool in resources.get("pools") or []]


def pools_changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a page showing `before`'s pools should be told about `after`'s: a pool came,
    went, or changed state or settings, or its use moved by a whole percent of its capacity (a
    guest writing moves allocation on every reading; that is not worth an event each time)."""

    def key(resources: dict[str, Any]) -> list[dict[str, Any]]:
        shown = []
        for pool in pools_summary(resources):
            capacity = pool.get("capacity_bytes") or 0
            used = pool.get("allocation_bytes") or 0
            shown.append(
                {
                    **{k: v for k, v in pool.items() if not k.endswith("_bytes")},
                    "capacity_bytes": capacity,
                    "used_pct": int(100 * used / capacity) if capacity else 0,
                }
            )
        return shown

    return key(before) != key(after)


def resources_changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a page showing `before` should be told about `after`: its pools changed (as
    pools_changed says), or a network or host bridge came, went or changed."""
    if pools_changed(before, after):
        return True
    return any((before.get(k) or []) != (after.get(k) or []) for k in ("networks", "bridges"))


def host_resources_event(host: Host) -> dict[str, Any]:
    """A host's storage pools or networks changed: each as the host page's tables show them."""
    resources = host.resources
    return {
        "type": "host.resources",
        "host": _host_payload(host),
        "pools": pools_summary(resources),
        "networks": list(resources.get("networks") or []),
        "bridges": list(resources.get("bridges") or []),
    }
