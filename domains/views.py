from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from console.access.policy import has_site_perm
from console.access.selectors import team_list
from console.audit.services import origin_of
from console.errors import DomusError
from console.jobs.selectors import job_list
from domains.selectors import domain_get, domain_jobs, domain_list
from domains.services import domain_create, domain_delete, domain_power, domain_set_autostart
from hosts.selectors import host_list


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "domains/home.html",
        {
            "hosts": host_list(user=request.user),
            "domains": domain_list(user=request.user),
            "jobs": job_list(user=request.user)[:10],
        },
    )


def _form_to_spec(post: Any) -> tuple[int | None, dict[str, Any], bool]:
    def number(name: str, default: int) -> Any:
        raw = post.get(name, "").strip()
        try:
            return int(raw) if raw else default
        except ValueError:
            return raw  # the spec validation names the field

    boot: dict[str, Any]
    if post.get("boot_kind") == "iso":
        boot = {"iso": post.get("iso", "").strip()}
    else:
        boot = {
            "kernel": post.get("kernel", "").strip(),
            "cmdline": post.get("cmdline", "").strip(),
        }
        if initrd := post.get("initrd", "").strip():
            boot["initrd"] = initrd
    disks: list[dict[str, Any]] = []
    size = post.get("disk_gib", "").strip()
    if size and size != "0":
        try:
            disks.append({"size_gib": float(size)})
        except ValueError:
            disks.append({"size_gib": size})
    data = {
        "name": post.get("name", "").strip(),
        "vcpus": number("vcpus", 1),
        "memory_mib": number("memory_mib", 256),
        "disks": disks,
        "boot": boot,
    }
    host = post.get("host", "")
    return (int(host) if host.isdigit() else None), data, post.get("start") == "on"


@login_required
def domain_new(request: HttpRequest) -> HttpResponse:
    hosts = host_list(user=request.user)
    teams = team_list(user=request.user, action="domain.create")
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        host_id, data, start = _form_to_spec(request.POST)
        host = hosts.filter(pk=host_id).first() if host_id is not None else None
        team_id = request.POST.get("team", "")
        team = teams.filter(pk=team_id).first() if team_id.isdigit() else None
        if host is None:
            errors = {"host": ["choose a host"]}
        else:
            try:
                domain, _ = domain_create(
                    actor=request.user,
                    host=host,
                    team=team,
                    data=data,
                    start=start,
                    origin=origin_of(request),
                )
            except DomusError as exc:
                errors = exc.fields or {"non_field_errors": [exc.detail]}
            else:
                messages.success(request, f"Creating {domain.name}…")
                return redirect("domain-detail", domain_id=domain.pk)
    return render(
        request,
        "domains/new.html",
        {
            "hosts": hosts,
            "teams": teams,
            "site_wide": has_site_perm(request.user, "domain.create"),
            "errors": errors,
            "form": request.POST if request.method == "POST" else {},
        },
        status=400 if errors else 200,
    )


@login_required
def domain_detail(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = domain_get(user=request.user, domain_id=domain_id)
    return render(
        request,
        "domains/detail.html",
        {"domain": domain, "jobs": domain_jobs(user=request.user, domain=domain)},
    )


@login_required
@require_POST
def domain_action(request: HttpRequest, domain_id: int, action: str) -> HttpResponse:
    domain = domain_get(user=request.user, domain_id=domain_id)
    try:
        if action == "delete":
            delete_disks = request.POST.get("delete_disks") == "on"
            domain_delete(
                actor=request.user, domain=domain, delete_disks=delete_disks, origin=origin_of(request)
            )
            messages.success(
                request,
                f"Deleting {domain.name}" + (" and its disks" if delete_disks else "") + "…",
            )
            return redirect("home")
        if action in ("autostart-on", "autostart-off"):
            enabled = action == "autostart-on"
            domain_set_autostart(
                actor=request.user, domain=domain, enabled=enabled, origin=origin_of(request)
            )
            messages.success(request, f"Turning autostart {'on' if enabled else 'off'} for {domain.name}…")
            return redirect("domain-detail", domain.pk)
        if action not in ("start", "shutdown", "force-off", "reboot", "pause", "resume"):
            return HttpResponseNotAllowed(["POST"])
        domain_power(actor=request.user, domain=domain, action=action, origin=origin_of(request))
    except DomusError as exc:
        messages.error(request, exc.detail)
    return redirect("domain-detail", domain_id=domain.pk)
