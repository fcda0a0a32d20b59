from __future__ import annotations

from typing import Any

from domains.models import Domain


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
        },
    }


def domain_deleted_event(*, domain_id: int, name: str, host_id: int, team_id: int | None) -> dict[str, Any]:
    return {
        "type": "domain.deleted",
        "domain": {"id": domain_id, "name": name, "host": host_id, "team": team_id},
    }
