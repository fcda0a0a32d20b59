from __future__ import annotations

from typing import Any

from hosts.models import Host


def host_event(host: Host) -> dict[str, Any]:
    return {
        "type": "host.state",
        "host": {
            "id": host.pk,
            "name": host.name,
            "state": host.state,
            "detail": host.state_detail,
            "teams": list(host.teams.values_list("pk", flat=True)),  # reserved to; [] when shared
        },
    }
