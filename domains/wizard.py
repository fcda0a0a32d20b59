"""The creation wizard's pages: the steps in the browser, each checked by the server.

The page posts the whole request (as the API takes it) to `check` after each step; the server
runs the same validation as the create call and answers with the errors of the steps reached so
far, and, at the review step, the summary and the domain XML that will be defined.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from agent.domxml import ResolvedBoot, ResolvedDisk, render_domain_xml
from agent.protocol import DomainSpec, volume_name
from console.access.policy import has_perm, has_site_perm
from console.access.selectors import team_list
from console.audit.services import origin_of
from console.errors import DomusError, InvalidInput
from domains.oscatalog import os_families, os_variants
from domains.placement import free_memory_mib, host_place
from domains.services import creating_team_guess, domain_create
from domains.specs import build_spec, host_facts, parse_size_mib, vcpu_limit
from domains.volumes import check_spec, visible_resources, writers_on
from hosts.models import Host
from hosts.networks import networks_kept
from hosts.selectors import host_list
from hosts.uploads import UPLOAD_POOL_TYPES, uploaded_checksums

# The fields each step owns (a field belongs to the step whose name prefixes it).
STEP_FIELDS: dict[int, tuple[str, ...]] = {
    1: ("name", "host", "team"),
    2: ("mode",),
    3: ("boot",),
    4: ("os",),
    5: ("disks",),
    6: ("nics",),
    7: ("memory_mib", "vcpus", "graphics", "serial", "autostart", "clock"),
    8: (),
}
REVIEW_STEP = 8


def _step_of(field: str) -> int:
    head = field.split(".", 1)[0]
    for step, names in STEP_FIELDS.items():
        if head in names:
            return step
    return REVIEW_STEP


def _host_option(
    host: Host, user: Any, checksums: dict[str, str], kept: dict[str, list[int]]
) -> dict[str, Any]:
    """What the wizard needs to know about a host to offer only what it can do (and only the
    volumes `user`'s teams may use)."""
    facts = host_facts(host)
    resources = visible_resources(user, host, host.resources) or {}
    # An image another domain writes is that domain's disk: not offered as "an existing image"
    # nor as a base to layer on (the server refuses both: domains.volumes.refusal).
    written = set(writers_on(host))
    pools = [
        {
            **pool,
            "volumes": [
                {**v, "sha256": checksums.get(v.get("path"), "")}
                for v in pool.get("volumes") or []
                if v.get("path") not in written
            ],
        }
        for pool in resources.get("pools", [])
    ]
    caps = facts.capabilities if facts else None
    return {
        "id": host.pk,
        "name": host.name,
        "state": host.state,
        "maintenance": host.maintenance,
        "maintenance_reason": host.maintenance_reason,
        "hypervisor": facts.hypervisor if facts else None,
        "cpus": facts.cpus if facts else None,
        "max_vcpus": vcpu_limit(facts),
        "memory_mib": facts.memory_mib if facts else None,
        "free_memory_mib": free_memory_mib(host),
        "modes": [m.model_dump() for m in caps.modes] if caps else [],
        "graphics": caps.graphics if caps else [],
        "pools": pools,
        "may_upload": has_perm(user, "media.upload", host),
        "upload_pools": list(UPLOAD_POOL_TYPES),
        # Each with the teams it is kept for ([]: every team), for the page to offer by team.
        "networks": [{**n, "teams": kept.get(n.get("name"), [])} for n in resources.get("networks", [])],
        "bridges": resources.get("bridges", []),
        "may_manage_networks": has_perm(user, "host.manage", host),
    }


@login_required
def domain_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _create(request)
    hosts = host_list(user=request.user)
    teams = team_list(user=request.user, action="domain.create")
    catalog = [
        {
            "id": v.id,
            "label": v.label,
            "family": v.family,
            "memory_mib": v.memory_mib,
            "min_memory_mib": v.min_memory_mib,
            "vcpus": v.vcpus,
            "disk_gib": v.disk_gib,
            "disk_bus": v.disk_bus,
            "nic_model": v.nic_model,
            "clock": v.clock,
            "pv_capable": v.pv_capable,
            "note": v.note,
        }
        for v in os_variants()
    ]
    checksums = uploaded_checksums(hosts)
    kept = networks_kept(hosts)
    context = {
        "hosts": hosts,
        "teams": teams,
        "site_wide": has_site_perm(request.user, "domain.create"),
        "wizard": {
            "hosts": [
                _host_option(h, request.user, checksums.get(h.pk, {}), kept.get(h.pk, {})) for h in hosts
            ],
            "os": catalog,
            "families": os_families(),
            # Which step owns each field, for the errors the server returns (STEP_FIELDS).
            "steps": {field: step for step, fields in STEP_FIELDS.items() for field in fields},
        },
    }
    return render(request, "domains/wizard.html", context)


def _request_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("The body must be JSON.") from exc
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.")
    return body


def _resolve(request: HttpRequest, body: dict[str, Any]) -> tuple[Host, Any, dict[str, Any], bool]:
    """Host, team, spec data and `start` from a wizard request (the API's shape)."""
    data = dict(body)
    host_id = data.pop("host", None)
    team_id = data.pop("team", None)
    start = data.pop("start", False)
    data.pop("step", None)
    team = None
    if team_id not in (None, ""):
        team = team_list(user=request.user, action="domain.create").filter(pk=_int(team_id, "team")).first()
        if team is None:
            raise InvalidInput("Unknown team.", fields={"team": [f"no team with id {team_id!r}"]})
    if host_id == "auto":
        host = host_place(
            user=request.user,
            memory_mib=_int(parse_size_mib(data.get("memory_mib", 256), default_unit="mib"), "memory_mib"),
            vcpus=_int(data.get("vcpus", 1), "vcpus"),
            mode=str(data.get("mode", "hvm")),
            team=team,
        )
    else:
        found = host_list(user=request.user).filter(pk=_int(host_id, "host")).first()
        if found is None:
            raise InvalidInput("Unknown host.", fields={"host": ["choose a host"]})
        host = found
    if not isinstance(start, bool):
        raise InvalidInput("Invalid start.", fields={"start": ["must be true or false"]})
    return host, team, data, start


def _int(value: Any, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Invalid {field}.", fields={field: ["must be a number"]}) from exc


def preview_xml(spec: DomainSpec, host: Host) -> str:
    """The domain XML the agent will define, with the volume paths it will choose."""
    facts = host_facts(host)
    pools = {p["name"]: p for p in host.resources.get("pools", [])}
    disks = []
    for index, disk in enumerate(spec.disks):
        if disk.existing is not None:
            disks.append(ResolvedDisk(path=disk.existing, format=disk.format))
            continue
        pool = pools.get(disk.pool, {})
        logical = pool.get("type") == "logical"
        where = (pool.get("path") or host.default_pool_path).rstrip("/")
        disks.append(
            ResolvedDisk(
                path=f"{where}/{volume_name(spec, index, logical=logical)}",
                format="raw" if logical else disk.format,
                block=logical,
            )
        )
    boot = spec.boot
    default = host.default_pool_path.rstrip("/")

    def in_pool(path: str | None) -> str | None:
        return None if path is None else path if path.startswith("/") else f"{default}/{path}"

    resolved = ResolvedBoot(
        kernel=in_pool(getattr(boot, "kernel", None)) if boot.kind == "kernel" else None,
        initrd=in_pool(getattr(boot, "initrd", None)) if boot.kind == "kernel" else None,
        cmdline=getattr(boot, "cmdline", "") if boot.kind == "kernel" else "",
        iso=in_pool(getattr(boot, "iso", None)),
        cdrom_device=getattr(boot, "device", None),
        seed_iso=f"{default}/{spec.name}-{spec.uuid.hex[:8]}-cidata.iso"
        if getattr(boot, "cloud_init", None)
        else None,
    )
    domain_type = facts.hypervisor if facts else "qemu"
    arch = facts.arch if facts else "x86_64"
    return render_domain_xml(spec, domain_type=domain_type, boot=resolved, disks=disks, arch=arch)


def _host_ref(host: Host | None) -> dict[str, Any] | None:
    return None if host is None else {"id": host.pk, "name": host.name}


@login_required
@require_POST
def domain_new_check(request: HttpRequest) -> JsonResponse:
    """Validate the wizard up to `step`: errors of later steps are not shown yet."""
    host: Host | None = None
    try:
        body = _request_body(request)
        step = _int(body.get("step", REVIEW_STEP), "step")
        host, team, data, _start = _resolve(request, body)
        spec = build_spec(data, host)
        team = creating_team_guess(request.user, team)
        if refused := check_spec(actor=request.user, host=host, team=team, spec=spec):
            raise InvalidInput("Volumes you may not use.", fields=refused)
    except DomusError as exc:
        fields = exc.fields or {"non_field_errors": [exc.detail]}
        shown = {f: m for f, m in fields.items() if _step_of(f) <= step}
        return JsonResponse({"ok": not shown, "errors": shown, "host": _host_ref(host)})
    answer: dict[str, Any] = {"ok": True, "errors": {}, "host": _host_ref(host)}
    if step >= REVIEW_STEP:
        answer["spec"] = spec.model_dump(mode="json", exclude={"uuid"})
        answer["xml"] = preview_xml(spec, host)
    return JsonResponse(answer)


def _create(request: HttpRequest) -> JsonResponse:
    try:
        body = _request_body(request)
        host, team, data, start = _resolve(request, body)
        domain, job = domain_create(
            actor=request.user, host=host, team=team, data=data, start=start, origin=origin_of(request)
        )
    except DomusError as exc:
        return JsonResponse(
            {"ok": False, "detail": exc.detail, "errors": exc.fields or {"non_field_errors": [exc.detail]}},
            status=exc.status,
        )
    url = reverse("domain-detail", kwargs={"domain_id": domain.pk})
    return JsonResponse({"ok": True, "domain": domain.pk, "job": job.pk, "redirect": url}, status=202)
