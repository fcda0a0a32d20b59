from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from console.audit.services import origin_of
from console.errors import DomusError
from console.jobs.selectors import job_list
from domains.selectors import domain_get, domain_jobs, domain_list
from domains.services import domain_delete, domain_power, domain_set_autostart
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
