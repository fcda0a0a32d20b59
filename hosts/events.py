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
