from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from agent.protocol import format_fingerprint
from console.access.policy import has_site_perm
from console.audit.services import origin_of
from console.errors import DomusError
from console.jobs.selectors import job_list
from domains.models import Domain
from domains.selectors import domain_list
from domains.volumes import visible_resources
from hosts.enrolment import host_enrol, host_remove, host_rotate_secret
from hosts.models import Host
from hosts.selectors import host_list
from hosts.services import host_refresh, host_set_maintenance


@login_required
def host_list_page(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "hosts/list.html",
        {"hosts": host_list(user=request.user), "may_manage": has_site_perm(request.user, "host.manage")},
    )


@login_required
def host_add_page(request: HttpRequest) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    detail = ""
    if request.method == "POST":
        try:
            host = host_enrol(
                name=request.POST.get("name", "").strip(),
                url=request.POST.get("url", "").strip(),
                pairing_code=request.POST.get("pairing_code", "").strip(),
                fingerprint=request.POST.get("fingerprint", "").strip(),
                actor=request.user,
                origin=origin_of(request),
            )
        except DomusError as exc:
            errors, detail = exc.fields, exc.detail
        else:
            messages.success(
                request,
                f"Added {host.name}; its certificate {format_fingerprint(host.fingerprint)} is pinned.",
            )
            return redirect("host-detail", host.pk)
    return render(
        request,
        "hosts/add.html",
        {"errors": errors, "detail": detail, "form": request.POST if request.method == "POST" else {}},
        status=400 if errors or detail else 200,
    )


def _visible(request: HttpRequest, host_id: int) -> Host:
    host = host_list(user=request.user).filter(pk=host_id).first()
    if host is None:
        raise Http404("No such host.")
    return host


@login_required
def host_detail_page(request: HttpRequest, host_id: int) -> HttpResponse:
    host = _visible(request, host_id)
    return render(
        request,
        "hosts/detail.html",
        {
            "host": host,
            "fingerprint": format_fingerprint(host.fingerprint) if host.fingerprint else "",
            "caps": host.facts.get("capabilities") or {},
            "resources": visible_resources(request.user, host, host.resources),
            "may_manage": has_site_perm(request.user, "host.manage"),
            # The domains they may see: a shared host does not count other teams'.
            "domains": domain_list(user=request.user).filter(host=host).count(),
            "running": domain_list(user=request.user).filter(host=host, state=Domain.State.RUNNING).count(),
            "jobs": job_list(user=request.user).filter(host=host)[:10],
        },
    )


@login_required
@require_POST
def host_action(request: HttpRequest, host_id: int, action: str) -> HttpResponse:
    host = _visible(request, host_id)
    origin = origin_of(request)
    try:
        if action == "maintenance":
            on = request.POST.get("on") == "1"
            reason = request.POST.get("reason", "").strip()
            host_set_maintenance(host=host, on=on, reason=reason, actor=request.user, origin=origin)
            messages.success(request, f"{host.name} is {'in' if on else 'out of'} maintenance.")
        elif action == "refresh":
            host_refresh(host=host, actor=request.user)
            messages.success(request, f"Refreshing what {host.name} offers…")
        elif action == "rotate":
            host_rotate_secret(host=host, actor=request.user, origin=origin)
            messages.success(request, f"{host.name} has a new secret; the old one no longer works.")
        elif action == "remove":
            force = request.POST.get("force") == "on"
            result = host_remove(host=host, force=force, actor=request.user, origin=origin)
            forgot = len(result["forgotten_domains"])
            messages.success(
                request, f"Removed {host.name} (and the records of {forgot} domain(s); they keep running)."
            )
            return redirect("host-list")
        else:
            return HttpResponseNotAllowed(["POST"])
    except DomusError as exc:
        messages.error(request, exc.detail)
    return redirect("host-detail", host.pk)
