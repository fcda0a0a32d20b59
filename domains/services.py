from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from pydantic import ValidationError

from agent.protocol import DOMAIN_NAME_RE, NAME_RULE, DomainInfo, DomainSpec
from console.access.models import Team
from console.access.policy import explain, has_perm, has_site_perm, restrict
from console.access.quotas import quota_check
from console.audit.services import Origin, audit_record
from console.errors import Conflict, InvalidInput, PermissionDenied
from console.jobs.models import Job
from console.jobs.services import job_enqueue
from console.realtime.events import publish_on_commit
from domains import volumes
from domains.events import domain_deleted_event, domain_event
from domains.models import Domain, Volume
from domains.specs import build_spec, host_facts, parse_size_mib
from hosts.models import Host
from hosts.networks import nic_refusals

POWER_ACTIONS = {
    "start": "domain.start",
    "shutdown": "domain.shutdown",
    "force-off": "domain.force_off",
    "reboot": "domain.reboot",
    "pause": "domain.pause",
    "resume": "domain.resume",
}


def _require(actor: Any, action: str, domain: Domain) -> None:
    if not has_perm(actor, action, domain):
        raise PermissionDenied(explain(actor, action, domain))


def _refuse_failed(domain: Domain) -> None:
    if domain.state == Domain.State.FAILED:
        raise Conflict(
            f"{domain.name} was never created ({domain.failure or 'its create failed'}): retry the create "
            "or delete it."
        )


def creating_team_guess(actor: Any, team: Team | None) -> Team | None:
    """The team a create would put the domain in, or `team` when the create would be refused
    for it (the wizard's checks before the create, which says why)."""
    try:
        return _creating_team(actor, team)
    except (InvalidInput, PermissionDenied):
        return team


def _creating_team(actor: Any, team: Team | None) -> Team | None:
    """The team the new domain will belong to, checking the actor may create there."""
    if team is None:
        if has_site_perm(actor, "domain.create"):
            return None  # a site-wide creator may leave a domain to the site
        teams = list(restrict(Team.objects.all(), actor, "domain.create")[:2])
        if len(teams) != 1:
            raise InvalidInput(
                "Choose a team.", fields={"team": ["required: the id of a team you may create domains in"]}
            )
        team = teams[0]
    if not has_perm(actor, "domain.create", team):
        raise PermissionDenied(explain(actor, "domain.create", team))
    return team


@transaction.atomic
def domain_create(
    *,
    actor: Any,
    host: Host,
    data: dict[str, Any],
    team: Team | None = None,
    start: bool = False,
    origin: Origin | None = None,
) -> tuple[Domain, Job]:
    team = _creating_team(actor, team)
    if host.maintenance:
        reason = f" ({host.maintenance_reason})" if host.maintenance_reason else ""
        raise InvalidInput(
            "Host in maintenance.",
            fields={"host": [f"host {host.name} is in maintenance{reason} and takes no new domains"]},
        )
    if host.state == Host.State.IDENTITY_CHANGED:
        raise InvalidInput(
            "Host identity changed.",
            fields={
                "host": [f"host {host.name} presented an unexpected TLS certificate: {host.state_detail}"]
            },
        )
    if team is not None and host.teams.exists() and not host.teams.filter(pk=team.pk).exists():
        raise InvalidInput(
            "Host reserved.", fields={"host": [f"host {host.name} is reserved to other teams"]}
        )
    spec = build_spec(data, host)
    if refused := volumes.check_spec(actor=actor, host=host, team=team, spec=spec):
        raise InvalidInput("Volumes you may not use.", fields=refused)
    if refused := nic_refusals(actor=actor, host=host, team=team, nics=spec.nics):
        raise InvalidInput("Networks you may not use.", fields=refused)
    if Domain.objects.filter(host=host, name=spec.name).exists():
        raise InvalidInput(
            "Name already used.",
            fields={"name": [f"a domain named {spec.name!r} already exists on host {host.name}"]},
        )
    if team is not None:
        Team.objects.select_for_update().filter(pk=team.pk).first()  # one quota check at a time
        quota_check(
            team,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            disk_gib=sum(d.size_gib or 0 for d in spec.disks),
        )
    try:
        with transaction.atomic():
            domain = Domain.objects.create(
                uuid=spec.uuid,
                name=spec.name,
                host=host,
                team=team,
                vcpus=spec.vcpus,
                memory_mib=spec.memory_mib,
                spec=spec.model_dump(mode="json"),
                created_by=actor,
            )
    except IntegrityError as exc:  # the same name, created a moment ago by someone else
        raise InvalidInput(
            "Name already used.",
            fields={"name": [f"a domain named {spec.name!r} already exists on host {host.name}"]},
        ) from exc
    job = job_enqueue(kind="domain.create", actor=actor, host=host, domain=domain, params={"start": start})
    publish_on_commit(domain_event(domain))
    audit_record(
        action="domain.create",
        actor=actor,
        origin=origin,
        obj=domain,
        changes={"spec": domain.spec, "host": host.name, "team": team.name if team else None, "job": job.pk},
    )
    return domain, job


def domain_create_failed(*, domain: Domain, reason: str) -> None:
    """Its create job ended without defining it on the host: say so and why (in the caller's
    transaction: the job's own end). It waits for a retry or a delete."""
    domain.state = Domain.State.FAILED
    domain.failure = reason[:2000]
    domain.save(update_fields=["state", "failure", "updated_at"])
    publish_on_commit(domain_event(domain))


@transaction.atomic
def domain_retry_create(
    *, actor: Any, domain: Domain, start: bool = False, origin: Origin | None = None
) -> Job:
    """Try a failed create again, with the same spec (same uuid: the agent's define is
    idempotent on it, so a define that did happen is found rather than repeated)."""
    domain = Domain.objects.select_for_update().get(pk=domain.pk)
    _require(actor, "domain.create", domain)
    if domain.state != Domain.State.FAILED:
        raise Conflict(
            f"{domain.name} is {domain.get_state_display().lower()}: only a failed create is retried."
        )
    if domain.host.maintenance:
        raise Conflict(f"Host {domain.host.name} is in maintenance and takes no new domains.")
    try:  # checked again: its volumes may be others' by now
        spec: DomainSpec | None = DomainSpec.model_validate(domain.spec)
    except ValidationError:
        spec = None  # not a spec the agent would take either: the job says so
    if spec is not None:
        refused = volumes.check_spec(
            actor=actor, host=domain.host, team=domain.team, spec=spec, domain=domain
        )
        if refused:
            raise InvalidInput("Volumes you may not use.", fields=refused)
        if refused := nic_refusals(actor=actor, host=domain.host, team=domain.team, nics=spec.nics):
            raise InvalidInput("Networks you may not use.", fields=refused)
    domain.state = Domain.State.NEW
    domain.failure = ""
    domain.save(update_fields=["state", "failure", "updated_at"])
    job = job_enqueue(
        kind="domain.create", actor=actor, host=domain.host, domain=domain, params={"start": start}
    )
    publish_on_commit(domain_event(domain))
    audit_record(
        action="domain.create_retry",
        actor=actor,
        origin=origin,
        obj=domain,
        changes={"job": job.pk, "start": start},
    )
    return job


@transaction.atomic
def domain_power(*, actor: Any, domain: Domain, action: str, origin: Origin | None = None) -> Job:
    kind = POWER_ACTIONS.get(action)
    if kind is None:
        raise InvalidInput(f"Unknown action {action!r}.")
    _require(actor, "domain.power", domain)
    if domain.state == Domain.State.NEW and kind != "domain.start":
        raise Conflict(f"{domain.name} is still being defined.")
    _refuse_failed(domain)
    Domain.objects.select_for_update().filter(pk=domain.pk).first()  # one power request at a time
    # The same action as the last one still waiting would do nothing more: that job answers.
    # (Not an earlier one: start, stop, start must end started.)
    last = domain.jobs.filter(status=Job.Status.QUEUED).order_by("-created_at", "-pk").first()
    if last is not None and last.kind == kind:
        audit_record(
            action=kind, actor=actor, origin=origin, obj=domain, changes={"job": last.pk, "coalesced": True}
        )
        return last
    job = job_enqueue(kind=kind, actor=actor, host=domain.host, domain=domain)
    audit_record(action=kind, actor=actor, origin=origin, obj=domain, changes={"job": job.pk})
    return job


@transaction.atomic
def domain_set_autostart(*, actor: Any, domain: Domain, enabled: bool, origin: Origin | None = None) -> Job:
    """Whether the domain starts when its host does (a job: the agent changes libvirt's setting)."""
    _require(actor, "domain.edit", domain)
    _refuse_failed(domain)
    if domain.state in (Domain.State.NEW, Domain.State.MISSING):
        raise Conflict(f"{domain.name} is {domain.get_state_display().lower()}: it has no setting to change.")
    job = job_enqueue(
        kind="domain.autostart", actor=actor, host=domain.host, domain=domain, params={"enabled": enabled}
    )
    changes = {"autostart": enabled, "job": job.pk}
    audit_record(action="domain.autostart", actor=actor, origin=origin, obj=domain, changes=changes)
    return job


@transaction.atomic
def domain_set_resources(
    *,
    actor: Any,
    domain: Domain,
    memory_mib: Any = None,
    vcpus: Any = None,
    origin: Origin | None = None,
) -> Job:
    """New memory and/or vCPUs, checked against the host and the team's quota. The job applies
    them to the running guest where it can, otherwise from the next boot, and says which."""
    _require(actor, "domain.edit", domain)
    _refuse_failed(domain)
    if domain.state in (Domain.State.NEW, Domain.State.MISSING):
        raise Conflict(f"{domain.name} is {domain.get_state_display().lower()}: it has nothing to change.")
    errors: dict[str, list[str]] = {}
    memory = _positive(parse_size_mib(memory_mib, default_unit="mib"), "memory_mib", 16, errors)
    count = _positive(vcpus, "vcpus", 1, errors)
    if memory is None and count is None and not errors:
        errors["non_field_errors"] = ["give memory_mib, vcpus or both"]
    facts = host_facts(domain.host)
    if facts is not None:
        if memory is not None and facts.memory_mib and memory > facts.memory_mib:
            errors.setdefault("memory_mib", []).append(
                f"at most {facts.memory_mib} MiB: the memory of {domain.host}"
            )
        if count is not None and facts.cpus and count > facts.cpus:
            errors.setdefault("vcpus", []).append(
                f"at most {facts.cpus}: {domain.host} has {facts.cpus} CPUs"
            )
    if errors:
        raise InvalidInput("Invalid resources.", fields=errors)
    if domain.team is not None:
        Team.objects.select_for_update().filter(pk=domain.team.pk).first()
        quota_check(
            domain.team,
            vcpus=max(0, (count or domain.vcpus) - domain.vcpus),
            memory_mib=max(0, (memory or domain.memory_mib) - domain.memory_mib),
            disk_gib=0,
        )
    params = {k: v for k, v in (("memory_mib", memory), ("vcpus", count)) if v is not None}
    job = job_enqueue(kind="domain.resources", actor=actor, host=domain.host, domain=domain, params=params)
    audit_record(
        action="domain.resources", actor=actor, origin=origin, obj=domain, changes={**params, "job": job.pk}
    )
    return job


def _positive(value: Any, field: str, minimum: int, errors: dict[str, list[str]]) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        errors[field] = [
            "must be a whole number" + (" of MiB, or a size such as '2 GiB'" if field == "memory_mib" else "")
        ]
        return None
    if value < minimum or value > 16 * 1024 * 1024:
        errors[field] = [f"must be between {minimum} and {16 * 1024 * 1024}"]
        return None
    return int(value)


@transaction.atomic
def domain_rename(*, actor: Any, domain: Domain, name: Any, origin: Origin | None = None) -> Job:
    """Rename a shut-off domain (libvirt cannot rename a running one)."""
    _require(actor, "domain.edit", domain)
    if not isinstance(name, str) or not DOMAIN_NAME_RE.match(name):
        raise InvalidInput(
            "Invalid name.",
            fields={"name": [NAME_RULE]},
        )
    if domain.state != Domain.State.SHUTOFF:
        raise Conflict(f"{domain.name} is {domain.get_state_display().lower()}: shut it off to rename it.")
    if Domain.objects.filter(host=domain.host, name=name).exclude(pk=domain.pk).exists():
        raise InvalidInput(
            "Name already used.",
            fields={"name": [f"a domain named {name!r} already exists on host {domain.host}"]},
        )
    job = job_enqueue(
        kind="domain.rename", actor=actor, host=domain.host, domain=domain, params={"name": name}
    )
    changes = {"from": domain.name, "to": name, "job": job.pk}
    audit_record(action="domain.rename", actor=actor, origin=origin, obj=domain, changes=changes)
    return job


@transaction.atomic
def domain_delete(*, actor: Any, domain: Domain, delete_disks: bool, origin: Origin | None = None) -> Job:
    _require(actor, "domain.delete", domain)
    job = job_enqueue(
        kind="domain.delete",
        actor=actor,
        host=domain.host,
        domain=domain,
        params={"delete_disks": delete_disks},
    )
    changes = {"delete_disks": delete_disks, "job": job.pk}
    audit_record(action="domain.delete", actor=actor, origin=origin, obj=domain, changes=changes)
    return job


# What the console copies from an agent's report onto a domain's row (both have these names).
OBSERVED_FIELDS = ("state", "vcpus", "memory_mib", "autostart", "disks", "nics")


def observed(info: DomainInfo) -> dict[str, Any]:
    values = {field: getattr(info, field) for field in OBSERVED_FIELDS}
    values["disks"] = [disk.model_dump(mode="json") for disk in info.disks]
    values["nics"] = [nic.model_dump(mode="json") for nic in info.nics]
    return values


def _discovered_row(host: Host, info: DomainInfo, name: str) -> Domain:
    """A row for a domain the host reports and the console did not make (no spec)."""
    return Domain(uuid=info.uuid, name=name, host=host, **observed(info))


@transaction.atomic
def domain_observe(*, host: Host, info: DomainInfo) -> Domain:
    """Record what the host's agent reports about one domain (creating rows for domains defined
    behind Domus's back); publishes an event when something changed."""
    domain = Domain.objects.select_for_update().filter(uuid=info.uuid).first()
    if domain is None:
        name = info.name
        if Domain.objects.filter(host=host, name=name).exists():
            name = f"{name}-{str(info.uuid)[:8]}"
        domain = _discovered_row(host, info, name)
        domain.save(force_insert=True)
        volumes.register_disks([domain])
        publish_on_commit(domain_event(domain))
        return domain
    new = observed(info)
    if info.name != domain.name and _may_take_name(domain, info):
        new["name"] = info.name  # renamed on the host (by Domus or behind its back)
    if any(getattr(domain, k) != v for k, v in new.items()):
        disks_changed = domain.disks != new["disks"]
        for key, value in new.items():
            setattr(domain, key, value)
        domain.save(update_fields=[*new, "updated_at"])
        if disks_changed:
            volumes.register_disks([domain])
        publish_on_commit(domain_event(domain))
    return domain


def _may_take_name(domain: Domain, info: DomainInfo) -> bool:
    """Whether the row may follow the host's name: not when the row's name was made unique on
    purpose (a discovered domain whose name another row had), nor onto another row's name."""
    if domain.name == f"{info.name}-{str(info.uuid)[:8]}":
        return False
    return not Domain.objects.filter(host_id=domain.host_id, name=info.name).exclude(pk=domain.pk).exists()


@transaction.atomic
def domains_discovered(*, host: Host, infos: list[DomainInfo]) -> None:
    """Record many domains the console has no row for (a host's first inventory): a few
    queries and one bulk insert instead of a locked read and an insert per domain."""
    uuids = [info.uuid for info in infos]
    elsewhere = set(Domain.objects.filter(uuid__in=uuids).values_list("uuid", flat=True))
    taken = set(Domain.objects.filter(host=host).values_list("name", flat=True))
    rows = []
    for info in infos:
        if info.uuid in elsewhere:  # known after all (moved, or raced): the one-by-one path
            domain_observe(host=host, info=info)
            continue
        name = info.name if info.name not in taken else f"{info.name}-{str(info.uuid)[:8]}"
        taken.add(name)
        rows.append(_discovered_row(host, info, name))
    created = Domain.objects.bulk_create(rows, batch_size=500)
    volumes.register_disks(created)
    for domain in created:
        publish_on_commit(domain_event(domain))


@transaction.atomic
def domain_vanished(*, domain_id: int) -> None:
    """The host no longer knows this domain. A delete job in flight forgets the row itself;
    otherwise it was undefined behind Domus's back: a domain Domus created is kept and flagged
    missing, so that someone notices; one it only discovered is forgotten."""
    domain = Domain.objects.select_for_update().filter(pk=domain_id).first()
    if domain is None:  # forgotten meanwhile (its delete job finished)
        return
    deleting = [Job.Status.QUEUED, Job.Status.RUNNING]
    if domain.jobs.filter(kind="domain.delete", status__in=deleting).exists():
        return
    if not domain.spec:
        domain_forget(domain=domain)
    elif domain.state not in (Domain.State.NEW, Domain.State.MISSING, Domain.State.FAILED):
        domain.state = Domain.State.MISSING
        domain.save(update_fields=["state", "updated_at"])
        publish_on_commit(domain_event(domain))


@transaction.atomic
def domain_forget(*, domain: Domain) -> None:
    """Remove the console's record once the host has undefined the domain."""
    event = domain_deleted_event(
        domain_id=domain.pk, name=domain.name, host_id=domain.host_id, team_id=domain.team_id
    )
    # The volumes it kept become orphans: they say whose they were (as it was last named).
    Volume.objects.filter(domain=domain).update(domain_name=domain.name)
    domain.delete()
    publish_on_commit(event)
