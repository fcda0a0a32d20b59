from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from agent.protocol import format_fingerprint
from console.access.models import Team
from console.access.policy import has_perm, has_site_perm
from console.audit.services import origin_of
from console.errors import DomusError, InvalidInput
from console.jobs.selectors import job_list
from console.params import MAX_ID, whole_number
from domains.models import Domain
from domains.selectors import domain_list, volume_list
from domains.volumes import (
    require_volume_manage,
    teams_by_id,
    visible_resources,
    volume_update,
    volume_uses,
)
from hosts.enrolment import host_enrol, host_remove, host_rotate_secret
from hosts.models import Host
from hosts.networks import (
    network_action,
    network_create,
    network_dhcp_update,
    network_modes,
    network_rows,
    network_teams_set,
)
from hosts.pool_volumes import orphans, orphans_delete, volume_action, volume_create, volume_rows
from hosts.pools import Users, pool_action, pool_create, pool_rows, pool_types
from hosts.selectors import host_list
from hosts.services import host_refresh, host_set_maintenance
from hosts.uploads import upload_fetch, upload_form, upload_list


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


VOLUMES_SHOWN = 200  # on the page; /api/v1/volumes/?host= pages through all


def _volume_rows(request: HttpRequest, host: Host) -> tuple[list[dict[str, Any]], int]:
    """The host's volumes the user may see (at most VOLUMES_SHOWN), each with its grants and
    use, and how many there are."""
    volumes = volume_list(user=request.user, host_id=host.pk)
    shown = list(volumes[:VOLUMES_SHOWN])
    uses = volume_uses(shown, request.user)
    rows = []
    for volume in shown:
        granted = sorted(volume.granted_to.all(), key=lambda t: t.name)
        rows.append(
            {
                "volume": volume,
                "granted": granted,
                "granted_ids": {t.pk for t in granted},
                "use": uses.get(volume.pk),
            }
        )
    return rows, len(shown) if len(shown) < VOLUMES_SHOWN else volumes.count()


@login_required
def host_detail_page(request: HttpRequest, host_id: int) -> HttpResponse:
    host = _visible(request, host_id)
    volumes, volumes_total = _volume_rows(request, host)
    manages_volumes = has_perm(request.user, "host.manage", host)
    users = Users.of(host)  # the host's domains and their disks, once for pools and orphans
    # The domains they may see, in one query: a shared host does not count other teams'.
    counts = (
        domain_list(user=request.user)
        .filter(host=host)
        .aggregate(domains=Count("pk"), running=Count("pk", filter=Q(state=Domain.State.RUNNING)))
    )
    return render(
        request,
        "hosts/detail.html",
        {
            "host": host,
            "fingerprint": format_fingerprint(host.fingerprint) if host.fingerprint else "",
            "caps": host.facts.get("capabilities") or {},
            "resources": visible_resources(request.user, host, host.resources),
            "may_manage": has_site_perm(request.user, "host.manage"),
            **counts,
            "jobs": job_list(user=request.user).filter(host=host)[:10],
            "volumes": volumes,
            "volumes_total": volumes_total,
            "manages_volumes": manages_volumes,
            "teams": list(Team.objects.all()) if manages_volumes else [],
            "pools": pool_rows(request.user, host, users),
            "may_manage_pools": manages_volumes,
            "orphans_count": len(orphans(user=request.user, host=host, users=users)),
            "pool_types": pool_types(host),
            "networks": network_rows(request.user, host),
            "bridges": [
                {"name": name, "addresses": (host.resources.get("bridge_addresses") or {}).get(name, [])}
                for name in host.resources.get("bridges") or []
            ],
            "network_modes": network_modes(),
        },
    )


# What each pool type asks for on the page (the agent's PoolSpec says what each needs).
POOL_FIELDS = ("target_path", "source_host", "source_dir", "source_name", "source_format", "adapter")


@login_required
@require_POST
def host_pool_create_page(request: HttpRequest, host_id: int) -> HttpResponse:
    """The host page's "New storage pool" form, through the same service as the API."""
    host = _visible(request, host_id)
    data: dict[str, Any] = {
        "name": request.POST.get("name", "").strip(),
        "type": request.POST.get("type", ""),
    }
    for field in POOL_FIELDS:
        if value := request.POST.get(field, "").strip():
            data[field] = value
    devices = [d.strip() for d in request.POST.get("source_devices", "").split(",") if d.strip()]
    if devices:
        data["source_devices"] = devices
    for flag in ("build", "start", "autostart"):
        data[flag] = request.POST.get(flag) == "on"
    try:
        pool_create(actor=request.user, host=host, data=data, origin=origin_of(request))
    except DomusError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Defining the storage pool {data['name']} on {host.name}…")
    return redirect("host-detail", host.pk)


@login_required
@require_POST
def host_pool_action_page(request: HttpRequest, host_id: int, pool: str, action: str) -> HttpResponse:
    host = _visible(request, host_id)
    try:
        pool_action(
            actor=request.user,
            host=host,
            name=pool,
            action=action,
            autostart=request.POST.get("autostart") == "1" if action == "autostart" else None,
            delete_storage=request.POST.get("delete_storage") == "on",
            origin=origin_of(request),
        )
    except DomusError as exc:
        messages.error(request, exc.detail)
    else:
        said = {"start": "Starting", "stop": "Stopping", "refresh": "Refreshing", "delete": "Deleting"}
        if action == "autostart":
            on = request.POST.get("autostart") == "1"
            messages.success(request, f"Turning autostart {'on' if on else 'off'} for the pool {pool}…")
        else:
            messages.success(request, f"{said.get(action, action)} the storage pool {pool}…")
    return redirect("host-detail", host.pk)


# -- virtual networks -------------------------------------------------------------------------------
NETWORK_FIELDS = ("bridge", "ipv4", "ipv6", "forward_dev", "dhcp_start", "dhcp_end")


def _dhcp_hosts(text: str) -> list[dict[str, str]]:
    """The page's static hosts, one per line: `MAC IP [name]` (commas or spaces between)."""
    hosts = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.replace(",", " ").split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) not in (2, 3):
            raise InvalidInput(
                "Invalid DHCP hosts.",
                fields={
                    "hosts": [
                        f"line {number}: write MAC, IP and optionally a name, e.g. 52:54:00:12:34:56 "
                        "192.168.150.20 web1"
                    ]
                },
            )
        entry = {"mac": words[0], "ip": words[1]}
        if len(words) == 3:
            entry["name"] = words[2]
        hosts.append(entry)
    return hosts


@login_required
@require_POST
def host_network_create_page(request: HttpRequest, host_id: int) -> HttpResponse:
    """The host page's "New virtual network" form, through the same service as the API."""
    host = _visible(request, host_id)
    data: dict[str, Any] = {
        "name": request.POST.get("name", "").strip(),
        "mode": request.POST.get("mode", "nat"),
        "start": request.POST.get("start") == "on",
        "autostart": request.POST.get("autostart") == "on",
    }
    for field in NETWORK_FIELDS:
        if value := request.POST.get(field, "").strip():
            data[field] = value
    try:
        if hosts := request.POST.get("hosts", "").strip():
            data["hosts"] = _dhcp_hosts(hosts)
        network_create(actor=request.user, host=host, data=data, origin=origin_of(request))
    except DomusError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Defining the virtual network {data['name']} on {host.name}…")
    return redirect("host-detail", host.pk)


def _back(request: HttpRequest, host: Host) -> HttpResponse:
    """Back where the form was: a page of this console only (the wizard, the network's page)."""
    target = request.POST.get("next", "")
    if target.startswith("/") and not target.startswith("//"):
        return redirect(target)
    return redirect("host-detail", host.pk)


@login_required
@require_POST
def host_network_action_page(request: HttpRequest, host_id: int, network: str, action: str) -> HttpResponse:
    host = _visible(request, host_id)
    try:
        network_action(
            actor=request.user,
            host=host,
            name=network,
            action=action,
            autostart=request.POST.get("autostart") == "1" if action == "autostart" else None,
            origin=origin_of(request),
        )
    except DomusError as exc:
        messages.error(request, exc.detail)
    else:
        said = {"start": "Starting", "stop": "Stopping", "delete": "Deleting"}
        if action == "autostart":
            on = request.POST.get("autostart") == "1"
            messages.success(request, f"Turning autostart {'on' if on else 'off'} for the network {network}…")
        else:
            messages.success(request, f"{said.get(action, action)} the virtual network {network}…")
    if action == "delete":
        return redirect("host-detail", host.pk)
    return _back(request, host)


@login_required
@require_POST
def host_network_teams_page(request: HttpRequest, host_id: int, network: str) -> HttpResponse:
    """The network page's "Keep it for" form."""
    host = _visible(request, host_id)
    try:
        ids = _team_ids(request.POST.getlist("teams"), field="teams")
        kept = network_teams_set(
            actor=request.user, host=host, name=network, team_ids=ids, origin=origin_of(request)
        )
    except DomusError as exc:
        _refused(request, exc)
    else:
        messages.success(
            request,
            f"{network} is kept for {len(kept)} team(s)." if kept else f"{network} is open to every team.",
        )
    return redirect("host-network", host.pk, network)


@login_required
def host_network_page(request: HttpRequest, host_id: int, network: str) -> HttpResponse:
    """One network: its addresses, DHCP range and static hosts (editable), domains attached."""
    host = _visible(request, host_id)
    rows = [row for row in network_rows(request.user, host) if row["name"] == network]
    if not rows:
        raise Http404(f"{host.name} has no virtual network {network!r}")
    may_manage = has_perm(request.user, "host.manage", host)
    if request.method == "POST":
        if not may_manage:
            messages.error(request, "You may not change this host's networks.")
            return redirect("host-network", host.pk, network)
        data: dict[str, Any] = {
            "dhcp_start": request.POST.get("dhcp_start", "").strip() or None,
            "dhcp_end": request.POST.get("dhcp_end", "").strip() or None,
        }
        try:
            data["hosts"] = _dhcp_hosts(request.POST.get("hosts", ""))
            network_dhcp_update(
                actor=request.user, host=host, name=network, data=data, origin=origin_of(request)
            )
        except DomusError as exc:
            _refused(request, exc)
        else:
            messages.success(request, f"Changing the DHCP of {network}…")
        return redirect("host-network", host.pk, network)
    row = rows[0]
    hosts_text = "\n".join(
        " ".join(filter(None, (h.get("mac"), h.get("ip"), h.get("name")))) for h in row["hosts"]
    )
    return render(
        request,
        "hosts/network.html",
        {
            "host": host,
            "network": row,
            "hosts_text": hosts_text,
            "may_manage": may_manage,
            "jobs": job_list(user=request.user).filter(host=host, target_name=f"network {network}")[:10],
            "teams": list(Team.objects.all()) if may_manage else [],
            "kept_ids": [team["id"] for team in row["teams"]],
        },
    )


@login_required
@require_POST
def host_volume_page(request: HttpRequest, host_id: int, volume_id: int) -> HttpResponse:
    """The host page's form for one volume: its owner, library flag and grants, all three (the
    form always sends them), through the same service as the API's PATCH."""
    host = _visible(request, host_id)
    volume = volume_list(user=request.user, host_id=host.pk).filter(pk=volume_id).first()
    if volume is None:
        raise Http404("No such volume.")
    try:
        require_volume_manage(request.user, volume)  # before saying what is wrong with the form
        team_ids = _team_ids(request.POST.getlist("team"), field="team")
        granted_ids = _team_ids(request.POST.getlist("granted_to"), field="granted_to")
        volume_update(
            actor=request.user,
            volume=volume,
            team=teams_by_id(team_ids, field="team")[0] if team_ids else None,
            library=request.POST.get("library") == "on",
            granted_to=teams_by_id(granted_ids, field="granted_to"),
            origin=origin_of(request),
        )
    except DomusError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Saved who may use {volume.path}.")
    return redirect("host-detail", host.pk)


def _refused(request: HttpRequest, exc: DomusError) -> None:
    """A form's refusal as the page's error flash: what was wrong, field by field."""
    problems = [f"{field}: {'; '.join(text)}" for field, text in exc.fields.items()]
    messages.error(request, " ".join([exc.detail, *problems]))


def _team_ids(values: list[str], *, field: str) -> list[int]:
    """A form's team ids ("" for none: the site's owner, no grant)."""
    ids = []
    for raw in filter(None, (v.strip() for v in values)):
        number = whole_number(raw, least=1, most=MAX_ID)
        if number is None:
            raise InvalidInput(f"Unknown {field}.", fields={field: [f"no team with id {raw[:40]!r}"]})
        ids.append(number)
    return ids


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


@login_required
def host_pool_page(request: HttpRequest, host_id: int, pool: str) -> HttpResponse:
    """One pool: its volumes (asked of the agent now), with what those who manage the host may
    do to each, and the host's orphans."""
    host = _visible(request, host_id)
    row = next((p for p in pool_rows(request.user, host) if p["name"] == pool), None)
    if row is None:
        raise Http404("No such pool.")
    listing, problem = None, ""
    offset = request.GET.get("offset")
    if row["active"]:
        try:
            listing = volume_rows(user=request.user, host=host, pool=pool, offset=offset)
        except DomusError as exc:
            problem = exc.detail
    else:
        problem = f"The pool is {row['state']}: start it to see its volumes."
    manages = has_perm(request.user, "host.manage", host)
    following = listing["offset"] + listing["limit"] if listing else 0
    return render(
        request,
        "hosts/pool.html",
        {
            "host": host,
            "pool": row,
            "listing": listing,
            "problem": problem,
            "may_manage": manages,
            "upload": upload_form(request.user, host, row),
            "uploads": [
                u for u in upload_list(actor=request.user, host=host) if u.pool == pool and not u.done
            ],
            "orphans": orphans(user=request.user, host=host) if manages else [],
            "next_offset": following if listing and following < listing["total"] else 0,
            "previous_offset": max(0, listing["offset"] - listing["limit"]) if listing else 0,
        },
    )


@login_required
@require_POST
def host_pool_volume_create_page(request: HttpRequest, host_id: int, pool: str) -> HttpResponse:
    host = _visible(request, host_id)
    data = {key: request.POST.get(key, "").strip() for key in ("name", "size", "format", "allocation")}
    try:
        volume_create(actor=request.user, host=host, pool=pool, data=data, origin=origin_of(request))
    except DomusError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Creating {data['name']} in {pool}…")
    return redirect("host-pool", host.pk, pool)


@login_required
@require_POST
def host_pool_fetch_page(request: HttpRequest, host_id: int, pool: str) -> HttpResponse:
    """Have the host's agent fetch an ISO or image from a URL into the pool (a job)."""
    host = _visible(request, host_id)
    data: dict[str, Any] = {
        key: request.POST.get(key, "").strip() for key in ("url", "name", "sha256", "team")
    }
    data |= {"host": host.pk, "pool": pool, "library": request.POST.get("library") == "1"}
    try:
        job = upload_fetch(actor=request.user, data=data, origin=origin_of(request))
    except DomusError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"{host.name} is fetching {job.target_name} (job {job.pk})…")
    return redirect("host-pool", host.pk, pool)


@login_required
@require_POST
def host_pool_volume_action_page(
    request: HttpRequest, host_id: int, pool: str, volume: str, action: str
) -> HttpResponse:
    host = _visible(request, host_id)
    data = {key: request.POST.get(key, "").strip() for key in ("size", "name")}
    try:
        volume_action(
            actor=request.user,
            host=host,
            pool=pool,
            name=volume,
            action=action,
            data=data,
            origin=origin_of(request),
        )
    except DomusError as exc:
        _refused(request, exc)
    else:
        said = {
            "resize": f"Growing {volume}",
            "clone": f"Copying {volume} to {data['name']}",
            "delete": f"Deleting {volume}",
        }
        messages.success(request, f"{said.get(action, action)}…")
    return redirect("host-pool", host.pk, pool)


@login_required
@require_POST
def host_orphans_delete_page(request: HttpRequest, host_id: int) -> HttpResponse:
    host = _visible(request, host_id)
    try:
        job = orphans_delete(actor=request.user, host=host, origin=origin_of(request))
    except DomusError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Removing {job.target_name}…")
    pool = request.POST.get("pool", "")
    return redirect("host-pool", host.pk, pool) if pool else redirect("host-detail", host.pk)
