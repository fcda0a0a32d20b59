"""A domain's network cards after it was created: attach one, detach one, set its link up or
down, move it to another network or host bridge, or give it another MAC (only while shut off).
Each is a job (`domain.edit`); the host applies it to the running guest where it can (hot-plug on
KVM/QEMU) and otherwise from the next boot, and the domain's cards then show what is pending
(agent NicInfo.pending).

The network or bridge named must be one the domain's host has (and, for a running domain, a
running network); a MAC must be unique on its network among the host's domains, as two guests
with one MAC on a network take each other's traffic."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from pydantic import ValidationError

from agent.protocol import MAC_RE, NicAttachRequest, NicChangeRequest
from console.errors import Conflict, InvalidInput, NotFound
from console.jobs.models import Job
from domains.disks import CHANGING, edit_allowed, enqueue_change
from domains.models import Domain
from domains.specs import _random_mac
from hosts.networks import network_refusal
from hosts.pools import invalid_input

MODELS = ("virtio", "e1000e", "e1000", "rtl8139", "netfront")
RUNNING = (Domain.State.RUNNING, Domain.State.PAUSED)


def _mac(value: Any) -> str:
    mac = value.strip().lower().replace("-", ":") if isinstance(value, str) else ""
    if not MAC_RE.match(mac):
        raise NotFound(f"No network card {str(value)[:40]!r}.")
    return mac


def _card(domain: Domain, mac: Any) -> dict[str, Any]:
    wanted = _mac(mac)
    for nic in domain.nics or []:
        if isinstance(nic, dict) and nic.get("mac") == wanted:
            return nic
    raise NotFound(f"{domain.name} has no network card {wanted}.")


def _joinable(actor: Any, domain: Domain, source: str, name: str, field: str) -> None:
    """The network or bridge must be the host's, and a network not kept for other teams; a
    running domain's network must run."""
    resources = domain.host.resources
    networks = {n["name"]: n for n in resources.get("networks") or []}
    if source == "network":
        network = networks.get(name)
        if network is None:
            known = ", ".join(sorted(networks)) or "none"
            raise InvalidInput(
                "Invalid network.",
                fields={field: [f"{domain.host.name} has no virtual network {name!r} (networks: {known})"]},
            )
        if why := network_refusal(actor=actor, host=domain.host, team=domain.team, name=name):
            raise InvalidInput("Invalid network.", fields={field: [why]})
        if domain.state in RUNNING and not network.get("active"):
            raise InvalidInput(
                "Invalid network.",
                fields={
                    field: [f"virtual network {name!r} is not running on {domain.host.name}: start it first"]
                },
            )
        return
    bridges = set(resources.get("bridges") or []) | {
        n.get("bridge") for n in networks.values() if n.get("bridge")
    }
    if name not in bridges:
        known = ", ".join(sorted(b for b in bridges if b)) or "none"
        raise InvalidInput(
            "Invalid bridge.",
            fields={field: [f"{domain.host.name} has no bridge {name!r} (bridges: {known})"]},
        )


def _mac_free(domain: Domain, mac: str, source: str, name: str, field: str) -> None:
    """No other card of this domain, nor of another domain on the same network or bridge of
    this host, has the MAC."""
    others = Domain.objects.filter(host=domain.host).exclude(state=Domain.State.MISSING).only("name", "nics")
    for other in others:
        for nic in other.nics or []:
            if not isinstance(nic, dict) or nic.get("mac") != mac:
                continue
            if other.pk == domain.pk:
                raise InvalidInput(
                    "Invalid MAC.", fields={field: [f"{domain.name} already has a card with {mac}"]}
                )
            if (nic.get("source"), nic.get("name")) == (source, name):
                raise InvalidInput(
                    "Invalid MAC.",
                    fields={
                        field: [
                            f"{mac} is already {other.name}'s on {name}: each card on a network needs its own"
                        ]
                    },
                )


@transaction.atomic
def domain_nic_attach(*, actor: Any, domain: Domain, data: Any, origin: Any = None) -> Job:
    """A card on a network (`source: "network"`, `name`) or a host bridge (`source: "bridge"`),
    with an optional `model` (the OS's default else) and `mac` (a new one else)."""
    edit_allowed(actor, domain, "its network cards")
    if not isinstance(data, dict):
        raise InvalidInput("Send the network card as a JSON object.")
    nic = {k: data[k] for k in ("source", "name", "model", "mac") if data.get(k)}
    nic.setdefault("source", "network")
    xen = domain.host.facts.get("hypervisor") == "xen"
    nic.setdefault("mac", _random_mac(xen))
    if "model" not in nic and (spec_nics := (domain.spec or {}).get("nics")):
        model = spec_nics[0].get("model") if isinstance(spec_nics[0], dict) else None
        if model:
            nic["model"] = model  # as the domain's first card: the OS's default when it was made
    try:
        request = NicAttachRequest.model_validate({"nic": nic})
    except ValidationError as exc:
        raise invalid_input(exc, "network card") from exc
    card = request.nic
    _joinable(actor, domain, card.source, card.name, "name")
    assert card.mac is not None
    _mac_free(domain, card.mac, card.source, card.name, "mac")
    params = request.model_dump(mode="json", exclude_none=True)
    return enqueue_change(actor=actor, domain=domain, kind="domain.nic.attach", params=params, origin=origin)


@transaction.atomic
def domain_nic_detach(*, actor: Any, domain: Domain, mac: Any, origin: Any = None) -> Job:
    edit_allowed(actor, domain, "its network cards")
    nic = _card(domain, mac)
    params = {"mac": nic["mac"], "source": nic.get("source"), "name": nic.get("name")}
    return enqueue_change(actor=actor, domain=domain, kind="domain.nic.detach", params=params, origin=origin)


@transaction.atomic
def domain_nic_change(*, actor: Any, domain: Domain, mac: Any, data: Any, origin: Any = None) -> Job:
    """`link` up or down, `source` and `name` (another network or bridge), or `mac` (shut off)."""
    edit_allowed(actor, domain, "its network cards")
    nic = _card(domain, mac)
    if not isinstance(data, dict):
        raise InvalidInput("Send the change as a JSON object.")
    try:
        change = NicChangeRequest.model_validate({k: v for k, v in data.items() if v not in (None, "")})
    except ValidationError as exc:
        raise invalid_input(exc, "change") from exc
    source, name = change.source or nic.get("source"), change.name or nic.get("name")
    if change.source is not None and change.name is not None:
        _joinable(actor, domain, change.source, change.name, "name")
    if change.mac is not None and change.mac != nic["mac"]:
        if domain.state != Domain.State.SHUTOFF:
            raise Conflict(f"{domain.name} is running: a card's MAC changes only while it is shut off.")
        _mac_free(domain, change.mac, str(source), str(name), "mac")
    # `card`: which card (its MAC now); the change's own `mac` is the new one.
    params = {"card": nic["mac"], **change.model_dump(mode="json", exclude_none=True)}
    return enqueue_change(actor=actor, domain=domain, kind="domain.nic.change", params=params, origin=origin)


PENDING = {
    "attach": "added from the next boot",
    "detach": "removed at the next boot",
    "change": "changes at the next boot",
}


def nic_rows(user: Any, domain: Domain) -> dict[str, Any]:
    """What the domain page shows of its cards, and what an editor may connect them to."""
    from console.access.policy import has_perm

    resources = domain.host.resources
    networks = [(n["name"], bool(n.get("active"))) for n in resources.get("networks") or []]
    nics = [
        {**nic, "pending_text": PENDING.get(nic.get("pending") or "", "")}
        for nic in domain.nics or []
        if isinstance(nic, dict)
    ]
    unfinished = Job.objects.filter(
        domain=domain, kind__startswith="domain.nic.", status__in=(Job.Status.QUEUED, Job.Status.RUNNING)
    ).count()
    return {
        "nics": nics,
        "unfinished": unfinished,
        "may_edit": has_perm(user, "domain.edit", domain) and domain.state in CHANGING,
        "shut_off": domain.state == Domain.State.SHUTOFF,
        "networks": networks,
        "bridges": list(resources.get("bridges") or []),
        "models": MODELS,
    }
