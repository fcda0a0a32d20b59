from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from agent.client import AgentClient, AgentError
from console.access.policy import explain, has_perm
from console.audit.services import origin_of
from console.errors import DomusError, InvalidInput, PermissionDenied
from console.jobs.selectors import job_list
from console.middleware import csp_inline_styles
from domains.disks import (
    disk_rows,
    domain_disk_attach,
    domain_disk_detach,
    domain_disk_resize,
    domain_media_change,
)
from domains.models import Domain
from domains.nics import domain_nic_attach, domain_nic_change, domain_nic_detach, nic_rows
from domains.selectors import DomainFilter, domain_filter_parse, domain_get, domain_jobs, domain_page
from domains.services import (
    domain_delete,
    domain_power,
    domain_rename,
    domain_retry_create,
    domain_set_autostart,
    domain_set_resources,
)
from hosts.agent import run_agent
from hosts.selectors import host_list

HOME_PAGE_SIZE = 50
SERIAL_LOG_TIMEOUT_SECONDS = 10.0
# The overview's columns, each sortable: (heading, ?ordering= key).
HOME_COLUMNS = (
    ("Name", "name"),
    ("Host", "host"),
    ("vCPUs", "vcpus"),
    ("Memory", "memory_mib"),
    ("Addresses", "address"),
    ("State", "state"),
)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The overview: hosts, one page of domains (filtered, sorted and paged by the database from
    GET parameters, as the API's list is) and recent jobs. Bad parameters are named, with a 400,
    and the unfiltered list is shown instead."""
    errors: dict[str, list[str]] = {}
    try:
        filters = domain_filter_parse(request.GET)
    except InvalidInput as exc:
        errors, filters = dict(exc.fields), DomainFilter()
    try:
        listing = domain_page(
            user=request.user, filters=filters, number=request.GET.get("page"), per_page=HOME_PAGE_SIZE
        )
    except InvalidInput as exc:
        errors.update(exc.fields)
        listing = domain_page(user=request.user, filters=filters, number="1", per_page=HOME_PAGE_SIZE)
    page = listing.page
    sorted_by, descending = filters.ordering.removeprefix("-"), filters.ordering.startswith("-")
    columns = [  # a click on the sorted column reverses it; on another, sorts by it ascending
        {
            "label": label,
            "sorted": ("desc" if descending else "asc") if key == sorted_by else "",
            "query": urlencode(
                filters.as_params(ordering=f"-{key}" if key == sorted_by and not descending else key)
            ),
        }
        for label, key in HOME_COLUMNS
    ]
    offset = (page.number - 1) * HOME_PAGE_SIZE
    return render(
        request,
        "domains/home.html",
        {
            "hosts": host_list(user=request.user),
            "page": page,
            "page_range": page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
            "newest_id": listing.newest_id,
            "filters": filters,
            "filtered": bool(filters.as_params(ordering="")),
            "query": urlencode(filters.as_params()),
            "clear_query": urlencode(DomainFilter(ordering=filters.ordering).as_params()),
            # The same rows through the API: what the live script re-reads after a reconnect.
            "api_query": urlencode({**filters.as_params(), "limit": HOME_PAGE_SIZE, "offset": offset}),
            "columns": columns,
            "states": Domain.State.choices,
            "errors": errors,
            "jobs": job_list(user=request.user)[:10],
        },
        status=400 if errors else 200,
    )


@login_required
@csp_inline_styles  # xterm.js writes <style> elements and style attributes
def domain_detail(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = domain_get(user=request.user, domain_id=domain_id)
    return render(
        request,
        "domains/detail.html",
        {
            "domain": domain,
            "jobs": domain_jobs(user=request.user, domain=domain),
            "disks": disk_rows(request.user, domain),
            "nics": nic_rows(request.user, domain),
        },
    )


@login_required
@require_POST
def domain_disk_attach_page(request: HttpRequest, domain_id: int) -> HttpResponse:
    """The page's "Attach a disk or CD-ROM drive" form: a job, or the refusal in a flash."""
    domain = domain_get(user=request.user, domain_id=domain_id)
    kind = request.POST.get("kind", "new")
    data: dict[str, Any] = {"device": "cdrom" if kind == "cdrom" else "disk"}
    if kind == "new":
        data |= {"size": request.POST.get("size", "").strip(), "pool": request.POST.get("pool", "").strip()}
    elif kind == "existing":
        data["existing"] = request.POST.get("existing", "").strip()
    elif request.POST.get("iso"):
        data["existing"] = request.POST["iso"]
    try:
        job = domain_disk_attach(actor=request.user, domain=domain, data=data, origin=origin_of(request))
    except DomusError as exc:
        messages.error(request, _said(exc))
    else:
        messages.success(request, f"Attaching {job.params.get('what', 'a disk')} to {domain.name}…")
    return redirect(f"{reverse('domain-detail', args=[domain.pk])}#disks")


@login_required
@require_POST
def domain_disk_op_page(request: HttpRequest, domain_id: int, target: str, op: str) -> HttpResponse:
    domain = domain_get(user=request.user, domain_id=domain_id)
    origin = origin_of(request)
    try:
        if op == "detach":
            domain_disk_detach(actor=request.user, domain=domain, target=target, origin=origin)
            said = f"Detaching {target} from {domain.name}…"
        elif op == "media":
            path = request.POST.get("path", "").strip() or None
            domain_media_change(actor=request.user, domain=domain, target=target, path=path, origin=origin)
            said = f"Inserting {path} in {target}…" if path else f"Ejecting the disc in {target}…"
        elif op == "resize":
            size = request.POST.get("size", "").strip()
            domain_disk_resize(actor=request.user, domain=domain, target=target, size=size, origin=origin)
            said = f"Growing {target} to {size}…"
        else:
            raise Http404("No such disk action.")
    except DomusError as exc:
        messages.error(request, _said(exc))
    else:
        messages.success(request, said)
    return redirect(f"{reverse('domain-detail', args=[domain.pk])}#disks")


@login_required
@require_POST
def domain_nic_attach_page(request: HttpRequest, domain_id: int) -> HttpResponse:
    """The page's "Add a network card" form: a job, or the refusal in a flash."""
    domain = domain_get(user=request.user, domain_id=domain_id)
    source, _, name = request.POST.get("connect", "").partition(":")
    data = {"source": source, "name": name, "model": request.POST.get("model", "").strip() or None}
    if mac := request.POST.get("mac", "").strip():
        data["mac"] = mac
    try:
        job = domain_nic_attach(actor=request.user, domain=domain, data=data, origin=origin_of(request))
    except DomusError as exc:
        messages.error(request, _said(exc))
    else:
        messages.success(
            request, f"Adding a card {job.params['nic']['mac']} on {source} {name} to {domain.name}…"
        )
    return redirect(f"{reverse('domain-detail', args=[domain.pk])}#nics")


@login_required
@require_POST
def domain_nic_op_page(request: HttpRequest, domain_id: int, mac: str, op: str) -> HttpResponse:
    """A card's row: detach, link (up or down), connect (another network or bridge), mac."""
    domain = domain_get(user=request.user, domain_id=domain_id)
    origin = origin_of(request)
    try:
        if op == "detach":
            domain_nic_detach(actor=request.user, domain=domain, mac=mac, origin=origin)
            said = f"Detaching the card {mac} from {domain.name}…"
        elif op == "link":
            link = "down" if request.POST.get("link") == "down" else "up"
            domain_nic_change(actor=request.user, domain=domain, mac=mac, data={"link": link}, origin=origin)
            said = f"Setting the link of {mac} {link}…"
        elif op == "connect":
            source, _, name = request.POST.get("connect", "").partition(":")
            data = {"source": source, "name": name}
            domain_nic_change(actor=request.user, domain=domain, mac=mac, data=data, origin=origin)
            said = f"Moving the card {mac} to {source} {name}…"
        elif op == "mac":
            new = request.POST.get("new_mac", "").strip()
            domain_nic_change(actor=request.user, domain=domain, mac=mac, data={"mac": new}, origin=origin)
            said = f"Giving the card {mac} the MAC {new}…"
        else:
            raise Http404("No such network card action.")
    except DomusError as exc:
        messages.error(request, _said(exc))
    else:
        messages.success(request, said)
    return redirect(f"{reverse('domain-detail', args=[domain.pk])}#nics")


def _said(exc: DomusError) -> str:
    """A refusal for a flash: its detail, and what each field's problem was."""
    fields = exc.fields
    extra = "; ".join(f"{name}: {', '.join(map(str, why))}" for name, why in fields.items())
    return f"{exc.detail} {extra}".strip() if extra and extra not in exc.detail else exc.detail


@login_required
def domain_serial_log(request: HttpRequest, domain_id: int) -> HttpResponse:
    """Download what the domain's serial console printed last (up to 256 KiB, as its host's
    agent recorded it): for whoever may watch that console."""
    domain = domain_get(user=request.user, domain_id=domain_id)
    if not has_perm(request.user, "domain.console.view", domain):
        raise PermissionDenied(explain(request.user, "domain.console.view", domain))

    async def read(client: AgentClient) -> bytes:
        return await client.serial_log(domain.uuid)

    try:
        data = run_agent(domain.host, read, timeout=SERIAL_LOG_TIMEOUT_SECONDS)
    except AgentError as exc:
        messages.error(request, f"The serial log of {domain.name} cannot be read: {exc.detail}")
        return redirect("domain-detail", domain_id=domain.pk)
    response = HttpResponse(data, content_type="text/plain; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="{domain.name}-serial-{stamp}.log"'
    return response


def _number_or_text(raw: str) -> int | str | None:
    """A form value: a whole number, else the text as typed (a size such as '2 GiB', or
    something the service refuses by name), None when empty."""
    text = raw.strip()
    if not text:
        return None
    return int(text) if text.isdigit() else text


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
        if action == "resources":
            domain_set_resources(
                actor=request.user,
                domain=domain,
                memory_mib=_number_or_text(request.POST.get("memory_mib", "")),
                vcpus=_number_or_text(request.POST.get("vcpus", "")),
                origin=origin_of(request),
            )
            messages.success(request, f"Changing the memory and vCPUs of {domain.name}…")
            return redirect("domain-detail", domain.pk)
        if action == "retry-create":
            domain_retry_create(
                actor=request.user,
                domain=domain,
                start=request.POST.get("start") == "on",
                origin=origin_of(request),
            )
            messages.success(request, f"Creating {domain.name} again…")
            return redirect("domain-detail", domain.pk)
        if action == "rename":
            name = request.POST.get("name", "").strip()
            domain_rename(actor=request.user, domain=domain, name=name, origin=origin_of(request))
            messages.success(request, f"Renaming {domain.name} to {name}…")
            return redirect("domain-detail", domain.pk)
        if action not in ("start", "shutdown", "force-off", "reboot", "pause", "resume"):
            return HttpResponseNotAllowed(["POST"])
        domain_power(actor=request.user, domain=domain, action=action, origin=origin_of(request))
    except DomusError as exc:
        reasons = "; ".join(f"{field}: {' '.join(why)}" for field, why in exc.fields.items())
        messages.error(request, f"{exc.detail} {reasons}".strip())
    return redirect("domain-detail", domain_id=domain.pk)
