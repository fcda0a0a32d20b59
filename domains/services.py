from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from agent.protocol import DomainInfo
from console.errors import Conflict, InvalidInput
from console.jobs.models import Job
from console.jobs.services import job_enqueue
from console.realtime.events import publish_on_commit
from domains.events import domain_deleted_event, domain_event
from domains.models import Domain
from domains.specs import build_spec
from hosts.models import Host

POWER_ACTIONS = {
    "start": "domain.start",
    "shutdown": "domain.shutdown",
    "force-off": "domain.force_off",
}


@transaction.atomic
def domain_create(*, actor: Any, host: Host, data: dict[str, Any], start: bool = False) -> tuple[Domain, Job]:
    spec = build_spec(data, host)
    if Domain.objects.filter(host=host, name=spec.name).exists():
        raise InvalidInput(
            "Name already used.",
            fields={"name": [f"a domain named {spec.name!r} already exists on host {host.name}"]},
        )
    try:
        with transaction.atomic():
            domain = Domain.objects.create(
                uuid=spec.uuid,
                name=spec.name,
                host=host,
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
    return domain, job


@transaction.atomic
def domain_power(*, actor: Any, domain: Domain, action: str) -> Job:
    kind = POWER_ACTIONS.get(action)
    if kind is None:
        raise InvalidInput(f"Unknown action {action!r}.")
    if domain.state == Domain.State.NEW and kind != "domain.start":
        raise Conflict(f"{domain.name} is still being defined.")
    return job_enqueue(kind=kind, actor=actor, host=domain.host, domain=domain)


@transaction.atomic
def domain_delete(*, actor: Any, domain: Domain, delete_disks: bool) -> Job:
    return job_enqueue(
        kind="domain.delete",
        actor=actor,
        host=domain.host,
        domain=domain,
        params={"delete_disks": delete_disks},
    )


@transaction.atomic
def domain_observe(*, host: Host, info: DomainInfo) -> Domain:
    """Record what the host's agent reports about one domain (creating rows for domains defined
    behind Domus's back); publishes an event when something changed."""
    domain = Domain.objects.select_for_update().filter(uuid=info.uuid).first()
    if domain is None:
        name = info.name
        if Domain.objects.filter(host=host, name=name).exists():
            name = f"{name}-{str(info.uuid)[:8]}"
        domain = Domain.objects.create(
            uuid=info.uuid,
            name=name,
            host=host,
            vcpus=info.vcpus,
            memory_mib=info.memory_mib,
            state=info.state,
        )
        publish_on_commit(domain_event(domain))
        return domain
    new = {"state": info.state, "vcpus": info.vcpus, "memory_mib": info.memory_mib}
    if any(getattr(domain, k) != v for k, v in new.items()):
        for key, value in new.items():
            setattr(domain, key, value)
        domain.save(update_fields=[*new, "updated_at"])
        publish_on_commit(domain_event(domain))
    return domain


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
    elif domain.state not in (Domain.State.NEW, Domain.State.MISSING):
        domain.state = Domain.State.MISSING
        domain.save(update_fields=["state", "updated_at"])
        publish_on_commit(domain_event(domain))


@transaction.atomic
def domain_forget(*, domain: Domain) -> None:
    """Remove the console's record once the host has undefined the domain."""
    domain_id, name = domain.pk, domain.name
    domain.delete()
    publish_on_commit(domain_deleted_event(domain_id=domain_id, name=name))
