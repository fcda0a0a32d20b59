"""A domain's disks and CD-ROMs after it was created: attach a new or existing disk, detach one,
grow one, and insert, change or eject the ISO in a CD-ROM drive. Each is a job (`domain.edit`);
the host applies it to the running guest where it can (hot-plug on KVM/QEMU) and otherwise from
the next boot, and the domain's disks then show what is pending (agent DiskInfo.pending).

Paths are checked as at create (domains.volumes.refusal): an existing disk must be the team's own
or granted (or, for a host's manager, anything no other domain writes), an ISO must be media the
team may read. A new disk, and growing one, count against the team's disk quota."""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction
from pydantic import ValidationError

from agent.protocol import DiskAttachRequest
from console.access.models import Team
from console.access.policy import explain, has_perm
from console.access.quotas import quota_check
from console.audit.services import Origin, audit_record
from console.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from console.jobs.models import Job
from console.jobs.services import job_enqueue
from domains.models import Domain
from domains.specs import parse_size_mib
from domains.volumes import absolute, refusal

GIB = 1 << 30
TARGET = re.compile(r"^(vd|sd|hd|xvd)[a-z]{1,2}$")
CHANGING = (Domain.State.RUNNING, Domain.State.PAUSED, Domain.State.SHUTOFF, Domain.State.CRASHED)


def edit_allowed(actor: Any, domain: Domain, what: str = "its disks") -> None:
    """`domain.edit` on the domain, and a state in which its devices can change."""
    if not has_perm(actor, "domain.edit", domain):
        raise PermissionDenied(explain(actor, "domain.edit", domain))
    if domain.state not in CHANGING:
        raise Conflict(f"{domain.name} is {domain.get_state_display().lower()}: {what} cannot change now.")


def _disk(domain: Domain, target: Any) -> dict[str, Any]:
    if not isinstance(target, str) or not TARGET.match(target):
        raise NotFound(f"{domain.name} has no disk {target!r}.")
    for disk in domain.disks or []:
        if isinstance(disk, dict) and disk.get("target") == target:
            return disk
    raise NotFound(f"{domain.name} has no disk {target}.")


def _size_gib(value: Any, field: str = "size") -> float:
    mib = parse_size_mib(value, default_unit="gib")
    if isinstance(mib, bool) or not isinstance(mib, int | float) or mib <= 0:
        raise InvalidInput(
            "Invalid size.", fields={field: ["must be a size: a number of GiB, or e.g. '512 MiB'"]}
        )
    return float(mib) / 1024


def _quota(domain: Domain, gib: float) -> None:
    if domain.team is not None and gib > 0:
        Team.objects.select_for_update().filter(pk=domain.team.pk).first()
        quota_check(domain.team, vcpus=0, memory_mib=0, disk_gib=gib)


def enqueue_change(
    *, actor: Any, domain: Domain, kind: str, params: dict[str, Any], origin: Origin | None
) -> Job:
    job = job_enqueue(kind=kind, actor=actor, host=domain.host, domain=domain, params=params)
    audit_record(action=kind, actor=actor, origin=origin, obj=domain, changes={**params, "job": job.pk})
    return job


def _path_refused(actor: Any, domain: Domain, path: str, field: str, *, writable: bool) -> None:
    why = refusal(
        actor=actor, host=domain.host, team=domain.team, path=path, writable=writable, domain=domain
    )
    if why:
        raise InvalidInput(f"{path} {why}.", fields={field: [f"{path} {why}"]})


@transaction.atomic
def domain_disk_attach(*, actor: Any, domain: Domain, data: Any, origin: Origin | None = None) -> Job:
    """A new disk (`size`, optional `pool`, `format`, `allocation`, `bus`), an existing volume
    (`existing`: a path), or a CD-ROM drive (`device: "cdrom"`, with `existing`: an ISO, or empty)."""
    edit_allowed(actor, domain)
    if not isinstance(data, dict):
        raise InvalidInput("Send the disk as a JSON object.")
    device = data.get("device") or "disk"
    if device not in ("disk", "cdrom"):
        raise InvalidInput("Invalid device.", fields={"device": ["must be disk or cdrom"]})
    existing = data.get("existing") or None
    disk: dict[str, Any] = {}
    for key in ("pool", "format", "allocation", "bus"):
        if data.get(key):
            disk[key] = data[key]
    size_gib = 0.0
    if existing is not None:
        if not isinstance(existing, str):
            raise InvalidInput(
                "Invalid path.", fields={"existing": ["must be a path in one of the host's pools"]}
            )
        existing = absolute(domain.host, existing)
        _path_refused(actor, domain, existing, "existing", writable=device == "disk")
        disk["existing"] = existing
    elif device == "disk":
        size_gib = _size_gib(data.get("size", data.get("size_gib")))
        disk["size_gib"] = size_gib
    try:
        request = DiskAttachRequest.model_validate(
            {"disk": disk, "device": device, "readonly": bool(data.get("readonly")) or device == "cdrom"}
        )
    except ValidationError as exc:
        raise InvalidInput(
            "Invalid disk.",
            fields={
                (".".join(map(str, e["loc"][1:] or e["loc"])) or "disk"): [str(e["msg"])]
                for e in exc.errors()
            },
        ) from exc
    _quota(domain, size_gib)
    what = existing or f"a new {size_gib:g} GiB disk"
    return enqueue_change(
        actor=actor,
        domain=domain,
        kind="domain.disk.attach",
        params={**request.model_dump(mode="json", exclude_defaults=True), "what": what},
        origin=origin,
    )


@transaction.atomic
def domain_disk_detach(*, actor: Any, domain: Domain, target: Any, origin: Origin | None = None) -> Job:
    """Take a disk or CD-ROM drive off the domain; its volume stays (delete it from its pool)."""
    edit_allowed(actor, domain)
    disk = _disk(domain, target)
    return enqueue_change(
        actor=actor,
        domain=domain,
        kind="domain.disk.detach",
        params={"target": disk["target"], "path": disk.get("path")},
        origin=origin,
    )


@transaction.atomic
def domain_media_change(
    *, actor: Any, domain: Domain, target: Any, path: Any, origin: Origin | None = None
) -> Job:
    """Insert or change (`path`: an ISO the team may read) or eject (`path` empty) a CD-ROM's ISO."""
    edit_allowed(actor, domain)
    disk = _disk(domain, target)
    if disk.get("device") != "cdrom":
        raise InvalidInput(
            f"{disk['target']} is not a CD-ROM drive.", fields={"target": ["must be a CD-ROM drive"]}
        )
    if path in (None, ""):
        iso = None
    elif isinstance(path, str):
        iso = absolute(domain.host, path)
        _path_refused(actor, domain, iso, "path", writable=False)
    else:
        raise InvalidInput("Invalid path.", fields={"path": ["must be an ISO's path, or empty to eject"]})
    return enqueue_change(
        actor=actor,
        domain=domain,
        kind="domain.disk.media",
        params={"target": disk["target"], "path": iso, "was": disk.get("path")},
        origin=origin,
    )


@transaction.atomic
def domain_disk_resize(
    *, actor: Any, domain: Domain, target: Any, size: Any, origin: Origin | None = None
) -> Job:
    """Grow a disk (live through the running guest where libvirt can; never shrunk). The growth
    counts against the team's disk quota."""
    edit_allowed(actor, domain)
    disk = _disk(domain, target)
    if disk.get("device") != "disk" or not disk.get("path"):
        raise InvalidInput(
            f"{disk['target']} is not a disk with a volume.", fields={"target": ["must be a disk"]}
        )
    gib = _size_gib(size)
    known = disk.get("capacity_bytes")
    if isinstance(known, int) and gib * GIB <= known:
        raise InvalidInput(
            "Invalid size.",
            fields={"size": [f"must be larger than its {known / GIB:g} GiB: disks are grown, never shrunk"]},
        )
    _quota(domain, gib - (known / GIB if isinstance(known, int) else 0))
    return enqueue_change(
        actor=actor,
        domain=domain,
        kind="domain.disk.resize",
        params={"target": disk["target"], "path": disk["path"], "capacity_bytes": int(gib * GIB)},
        origin=origin,
    )


PENDING = {
    "attach": "attached from the next boot",
    "detach": "removed at the next boot",
    "media": "disc changes at the next boot",
}


def disk_rows(user: Any, domain: Domain) -> dict[str, Any]:
    """What the domain page shows of its disks, and what an editor may put in: the host's ISOs
    and the pools a new disk may go to (only what the user's team may use)."""
    from domains.volumes import visible_resources

    resources = visible_resources(user, domain.host, domain.host.resources) or {}
    pools = [p for p in resources.get("pools", []) if p.get("active")]
    isos = [
        (v["path"], f"{v['name']} ({p['name']})")
        for p in pools
        for v in p.get("volumes") or []
        if v.get("kind") == "iso"
    ]
    disks = [
        {**d, "pending_text": PENDING.get(d.get("pending") or "", "")}
        for d in domain.disks or []
        if isinstance(d, dict)
    ]
    unfinished = Job.objects.filter(
        domain=domain, kind__startswith="domain.disk.", status__in=(Job.Status.QUEUED, Job.Status.RUNNING)
    ).count()
    return {
        "disks": disks,
        "unfinished": unfinished,  # the page reads itself again until these end
        "may_edit": has_perm(user, "domain.edit", domain) and domain.state in CHANGING,
        "isos": isos,
        "pools": [p["name"] for p in pools],
    }
