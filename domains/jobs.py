"""Job handlers for domain lifecycle work; they run in a Celery worker (see console/jobs/runner)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from django.conf import settings

from agent.client import AgentClient, AgentNotFound
from agent.protocol import (
    DiskAttachRequest,
    DiskChange,
    DomainInfo,
    DomainSpec,
    NicAttachRequest,
    NicChangeRequest,
    NicOutcome,
    ResourcesResult,
    VolumeResult,
)
from console.jobs.models import Job
from console.jobs.runner import JobCancelled, JobContext, JobFailed, job_handler
from domains import volumes
from domains.models import Domain, Volume
from domains.services import domain_create_failed, domain_forget, domain_observe
from hosts.agent import run_agent, run_agent_for_job

T = TypeVar("T")


def _domain(ctx: JobContext) -> Domain:
    domain = ctx.job.domain
    if domain is None:
        raise JobFailed("The domain no longer exists.")
    return domain


def _agent(ctx: JobContext, domain: Domain, op: Callable[[AgentClient], Awaitable[T]]) -> T:
    """One agent conversation for this job (hosts.agent.run_agent_for_job: idempotency keys, and
    an unreachable agent waited for until the job's deadline)."""
    return run_agent_for_job(ctx, domain.host, op)


def _read_back(ctx: JobContext) -> DomainInfo | None:
    """The domain as its host has it now (None: not defined there), for a verifier."""
    domain = _domain(ctx)

    async def read(client: AgentClient) -> DomainInfo | None:
        try:
            return await client.get_domain(domain.uuid)
        except AgentNotFound:
            return None

    info = run_agent(domain.host, read, timeout=10)
    if info is not None:
        domain_observe(host=domain.host, info=info)
    return info


def _verify_state(*states: str, verb: str) -> Callable[[JobContext], dict[str, Any] | None]:
    """A verifier (console.jobs.registry.VERIFY): the job's goal is the domain being in one of
    `states`."""

    def verify(ctx: JobContext) -> dict[str, Any] | None:
        info = _read_back(ctx)
        if info is None:
            raise JobFailed("The domain is not defined on its host any more.")
        if info.state not in states:
            raise JobFailed(f"Read back from the host: {info.name} is {info.state}, so it was not {verb}.")
        return {"state": info.state, "verified": f"{info.name} is {info.state}"}

    return verify


def _verify_created(ctx: JobContext) -> dict[str, Any] | None:
    info = _read_back(ctx)
    if info is None:
        raise JobFailed("Read back from the host: the domain was not defined.")
    if ctx.params.get("start") and info.state not in ("running", "blocked"):
        raise JobFailed(f"Read back from the host: {info.name} was defined but is {info.state}, not started.")
    return {"uuid": str(info.uuid), "verified": f"{info.name} is defined and {info.state}"}


def _verify_deleted(ctx: JobContext) -> dict[str, Any] | None:
    if ctx.job.domain is None:
        return {"verified": "the domain was already forgotten"}
    if _read_back(ctx) is not None:
        raise JobFailed("Read back from the host: the domain is still defined there.")
    domain_forget(domain=ctx.job.domain)
    ctx.job.domain = None
    return {"verified": "the domain is no longer defined on its host"}


def _create_not_done(job: Job) -> None:
    """A create that failed or was cancelled once running: unless the host has the domain by
    now (then hostwatch shows its real state), the row says so and why, with retry and delete."""
    if job.domain_id is None:
        return
    domain = Domain.objects.select_for_update().filter(pk=job.domain_id).first()
    if domain is None or domain.state != Domain.State.NEW:
        return
    domain_create_failed(domain=domain, reason=job.error or job.step)


def _observe(domain: Domain, info: DomainInfo, ctx: JobContext | None = None) -> None:
    if ctx is not None and ctx.job.attempts > 1:
        # A retried attempt may have been answered from the agent's memory of the first one:
        # record the domain as it is now, not as it was then.
        async def fresh(client: AgentClient) -> DomainInfo:
            return await client.get_domain(domain.uuid)

        info = run_agent_for_job(ctx, domain.host, fresh)
    domain_observe(host=domain.host, info=info)


@job_handler(
    "domain.create",
    permission="domain.create",
    cancellable=True,
    verify=_verify_created,
    on_not_done=_create_not_done,
)
def domain_create_job(ctx: JobContext) -> dict[str, Any]:
    domain = _domain(ctx)
    spec = DomainSpec.model_validate(domain.spec)
    disks = len(spec.disks)
    ctx.progress(
        10,
        f"Defining {domain.name} on {domain.host.name}" + (f" with {disks} disk(s)" if disks else ""),
    )

    async def define(client: AgentClient) -> DomainInfo:
        return await client.define(spec)

    info = _agent(ctx, domain, define)
    _observe(domain, info, ctx)
    ctx.progress(70 if ctx.params.get("start") else 90, f"Defined {domain.name}")
    if ctx.params.get("start"):
        # The safe point: libvirt cannot abort a define (its volumes) half-way, but the start
        # can be skipped, leaving a whole, defined domain.
        if ctx.cancel_requested():
            raise JobCancelled(f"Defined {domain.name}; not started, as the cancel asked.")
        _start(ctx, domain)
    return {"uuid": str(info.uuid)}


def _start(ctx: JobContext, domain: Domain) -> None:
    ctx.progress(max(ctx.job.progress, 20), f"Starting {domain.name}")

    async def start(client: AgentClient) -> DomainInfo:
        return await client.start(domain.uuid)

    _observe(domain, _agent(ctx, domain, start), ctx)


@job_handler("domain.start", permission="domain.power", verify=_verify_state("running", verb="started"))
def domain_start_job(ctx: JobContext) -> None:
    _start(ctx, _domain(ctx))


def _simple(ctx: JobContext, verb: str, call: Callable[[AgentClient, Domain], Awaitable[DomainInfo]]) -> None:
    """One agent call whose answer is the domain's new state (each is idempotent on the agent)."""
    domain = _domain(ctx)
    ctx.progress(20, f"{verb} {domain.name}")

    async def conversation(client: AgentClient) -> DomainInfo:
        return await call(client, domain)

    _observe(domain, _agent(ctx, domain, conversation), ctx)


@job_handler(
    "domain.force_off",
    permission="domain.power",
    verify=_verify_state("shutoff", "crashed", verb="forced off"),
)
def domain_force_off_job(ctx: JobContext) -> None:
    _simple(ctx, "Forcing off", lambda client, domain: client.destroy(domain.uuid))


@job_handler("domain.pause", permission="domain.power", verify=_verify_state("paused", verb="paused"))
def domain_pause_job(ctx: JobContext) -> None:
    _simple(ctx, "Pausing", lambda client, domain: client.suspend(domain.uuid))


@job_handler("domain.resume", permission="domain.power", verify=_verify_state("running", verb="resumed"))
def domain_resume_job(ctx: JobContext) -> None:
    _simple(ctx, "Resuming", lambda client, domain: client.resume(domain.uuid))


@job_handler("domain.reboot", permission="domain.power")
def domain_reboot_job(ctx: JobContext) -> None:
    _simple(ctx, "Rebooting", lambda client, domain: client.reboot(domain.uuid))


@job_handler("domain.autostart", permission="domain.edit")
def domain_autostart_job(ctx: JobContext) -> None:
    enabled = bool(ctx.params.get("enabled"))
    verb = "Turning autostart on for" if enabled else "Turning autostart off for"
    _simple(ctx, verb, lambda client, domain: client.set_autostart(domain.uuid, enabled))


@job_handler(
    "domain.shutdown",
    permission="domain.power",
    cancellable=True,
    offer_on_failure="force-off",
    verify=_verify_state("shutoff", verb="shut down"),
)
def domain_shutdown_job(ctx: JobContext) -> None:
    """Press the ACPI power button, and press it again every DOMUS_SHUTDOWN_RESEND_SECONDS while
    waiting: a guest still in its firmware or early boot (just started, or just rebooted) has no
    handler for the button yet, and loses the press without a trace (libvirt and QEMU report
    success, the guest keeps running). OpenStack nova does the same (shutdown_retry_interval)."""
    domain = _domain(ctx)
    timeout = settings.DOMUS_SHUTDOWN_TIMEOUT_SECONDS
    resend = settings.DOMUS_SHUTDOWN_RESEND_SECONDS
    ctx.progress(10, f"Asking {domain.name} to shut down (ACPI power button)")
    started = time.monotonic()
    deadline = started + timeout
    press = 0
    while True:
        press += 1

        async def ask(client: AgentClient, press: int = press) -> DomainInfo:
            return await client.shutdown(domain.uuid, press=press)

        info = _agent(ctx, domain, ask)
        if press == 1:
            ctx.log(f"Asked; waiting up to {timeout:.0f} s for {domain.name} to power off")
        else:
            ctx.log(
                f"Pressed the power button again ({press}) after {time.monotonic() - started:.0f} s: "
                "a guest that was still starting up does not hear it"
            )
        until = min(deadline, time.monotonic() + resend)

        async def wait(client: AgentClient, info: DomainInfo = info, until: float = until) -> DomainInfo:
            while info.state not in ("shutoff", "crashed") and time.monotonic() < until:
                if ctx.cancel_requested():
                    break
                await asyncio.sleep(1.0)
                info = await client.get_domain(domain.uuid)
            return info

        info = _agent(ctx, domain, wait)
        if info.state in ("shutoff", "crashed") or ctx.cancel_requested() or time.monotonic() >= deadline:
            break
    _observe(domain, info, ctx)
    if info.state not in ("shutoff", "crashed") and ctx.cancel_requested():
        raise JobCancelled(
            f"Stopped waiting for {domain.name} to power off. The ACPI shutdown request was already "
            "sent, so the guest may still power off on its own; use Force off to stop it now."
        )
    if info.state not in ("shutoff", "crashed"):
        raise JobFailed(
            f"{domain.name} did not power off within {timeout:.0f} s, asked {press} times: the guest "
            "ignores the ACPI shutdown request. Use Force off to stop it."
        )


@job_handler("domain.delete", permission="domain.delete", verify=_verify_deleted)
def domain_delete_job(ctx: JobContext) -> dict[str, Any]:
    if ctx.job.domain is None:  # a redelivery after this job had already forgotten it
        ctx.log("The domain was already deleted.")
        return {}
    domain = _domain(ctx)
    delete_disks = bool(ctx.params.get("delete_disks"))
    what = "with its disks" if delete_disks else "keeping its disks"
    ctx.progress(20, f"Deleting {domain.name} from {domain.host.name}, {what}")
    keep = volumes.kept_on_delete(domain) if delete_disks else {}
    for path, why in keep.items():
        ctx.log(f"Keeping {path}: {why}")

    async def delete(client: AgentClient) -> dict[str, Any]:
        try:
            result = await client.delete(domain.uuid, delete_disks=delete_disks, keep=list(keep))
        except AgentNotFound:
            return {
                "deleted_volumes": [],
                "kept_volumes": [],
                "note": "was not defined on the host",
            }
        return result.model_dump(mode="json")

    result = _agent(ctx, domain, delete)
    for volume in result.get("deleted_volumes", []):
        ctx.log(f"Deleted volume {volume}")
    Volume.objects.filter(host_id=domain.host_id, path__in=result.get("deleted_volumes", [])).delete()
    for volume in result.get("kept_volumes", []):
        ctx.log(f"Kept volume {volume}")
    domain_forget(domain=domain)
    ctx.job.domain = None  # the row is gone; the job keeps target_name
    return result


@job_handler("domain.resources", permission="domain.edit")
def domain_resources_job(ctx: JobContext) -> dict[str, Any]:
    domain = _domain(ctx)
    memory_mib, vcpus = ctx.params.get("memory_mib"), ctx.params.get("vcpus")
    wanted = ", ".join(
        part
        for part in (f"{memory_mib} MiB" if memory_mib else "", f"{vcpus} vCPUs" if vcpus else "")
        if part
    )
    ctx.progress(20, f"Setting {domain.name} to {wanted}")

    async def resize(client: AgentClient) -> ResourcesResult:
        return await client.set_resources(domain.uuid, memory_mib=memory_mib, vcpus=vcpus)

    result = _agent(ctx, domain, resize)
    _observe(domain, result.domain, ctx)
    for what, when in (("Memory", result.memory), ("vCPUs", result.vcpus)):
        if when != "unchanged":
            ctx.log(f"{what}: applied {'to the running guest' if when == 'now' else 'from the next boot'}")
    if result.detail:
        ctx.log(result.detail)
    return {"memory": result.memory, "vcpus": result.vcpus, "detail": result.detail}


@job_handler("domain.rename", permission="domain.edit")
def domain_rename_job(ctx: JobContext) -> dict[str, Any]:
    domain = _domain(ctx)
    name = str(ctx.params["name"])
    ctx.progress(20, f"Renaming {domain.name} to {name}")

    async def rename(client: AgentClient) -> DomainInfo:
        return await client.rename(domain.uuid, name)

    info = _agent(ctx, domain, rename)
    _observe(domain, info, ctx)
    return {"name": info.name}


# -- disks and CD-ROMs (domains.disks) ---------------------------------------------------------
def _said(ctx: JobContext, domain: Domain, change: DiskChange, what: str) -> dict[str, Any]:
    """Record the domain as the host has it after a disk change, and say when it applies."""
    _observe(domain, change.domain, ctx)
    when = "on the running guest now" if change.applied == "now" else "from the next boot"
    ctx.log(f"{what}: {when}" + (f" ({change.detail})" if change.detail else ""))
    return {"target": change.target, "path": change.path, "applied": change.applied, "detail": change.detail}


@job_handler("domain.disk.attach", permission="domain.edit")
def domain_disk_attach_job(ctx: JobContext) -> dict[str, Any]:
    domain = _domain(ctx)
    params = dict(ctx.params)
    what = params.pop("what", "a disk")
    request = DiskAttachRequest.model_validate(params)
    ctx.progress(20, f"Attaching {what} to {domain.name}")

    async def attach(client: AgentClient) -> DiskChange:
        return await client.attach_disk(domain.uuid, request)

    change = _agent(ctx, domain, attach)
    if change.created and change.path:
        size = request.disk.size_gib
        Volume.objects.update_or_create(
            host=domain.host,
            path=change.path,
            defaults={
                "team": domain.team,
                "domain": domain,
                "domain_name": domain.name,
                "origin": Volume.Origin.DOMAIN,
                "capacity_bytes": int(size * (1 << 30)) if size else None,
            },
        )
    return _said(ctx, domain, change, f"{change.path or 'an empty drive'} attached as {change.target}")


@job_handler("domain.disk.detach", permission="domain.edit")
def domain_disk_detach_job(ctx: JobContext) -> dict[str, Any]:
    domain = _domain(ctx)
    target = str(ctx.params["target"])
    ctx.progress(20, f"Detaching {target} from {domain.name}")

    async def detach(client: AgentClient) -> DiskChange:
        return await client.detach_disk(domain.uuid, target)

    change = _agent(ctx, domain, detach)
    return _said(ctx, domain, change, f"{target} detached (its volume is kept)")


@job_handler("domain.disk.media", permission="domain.edit")
def domain_disk_media_job(ctx: JobContext) -> dict[str, Any]:
    domain = _domain(ctx)
    target, path = str(ctx.params["target"]), ctx.params.get("path")
    ctx.progress(20, f"{'Inserting ' + path if path else 'Ejecting the disc'} in {target} of {domain.name}")

    async def media(client: AgentClient) -> DiskChange:
        return await client.change_media(domain.uuid, target, path)

    change = _agent(ctx, domain, media)
    return _said(ctx, domain, change, f"{path} in {target}" if path else f"{target} ejected")


@job_handler("domain.disk.resize", permission="domain.edit")
def domain_disk_resize_job(ctx: JobContext) -> dict[str, Any]:
    """A disk grown through its volume (live by libvirt's block resize when the guest runs)."""
    from hosts.jobs import pool_holding

    domain = _domain(ctx)
    path, capacity = str(ctx.params["path"]), int(ctx.params["capacity_bytes"])
    where = pool_holding(domain.host, path)
    if where is None:
        raise JobFailed(f"{path} is in none of {domain.host.name}'s pools: it cannot be grown from here.")
    pool, name = where
    ctx.progress(20, f"Growing {ctx.params['target']} of {domain.name} to {capacity / (1 << 30):g} GiB")

    async def grow(client: AgentClient) -> VolumeResult:
        return await client.resize_volume(pool, name, capacity)

    result = _agent(ctx, domain, grow)
    grown = result.volume.capacity_bytes if result.volume is not None else capacity
    Volume.objects.filter(host=domain.host, path=path).update(capacity_bytes=grown)
    if result.detail:
        ctx.log(result.detail)

    async def now(client: AgentClient) -> DomainInfo:
        return await client.get_domain(domain.uuid)

    # The size the resize answered is the disk's now, whatever the host's reading said of it.
    info = _agent(ctx, domain, now)
    target = ctx.params["target"]
    disks = [d.model_copy(update={"capacity_bytes": grown}) if d.target == target else d for d in info.disks]
    _observe(domain, info.model_copy(update={"disks": disks}), ctx)
    return {"capacity_bytes": grown, "detail": result.detail}


# -- network cards (domains/nics.py) ---------------------------------------------------------------


def _nic_said(ctx: JobContext, domain: Domain, outcome: NicOutcome, what: str) -> dict[str, Any]:
    """Record the domain as the host has it after a card's change, and say when it applies."""
    _observe(domain, outcome.domain, ctx)
    when = "on the running guest now" if outcome.applied == "now" else "from the next boot"
    ctx.log(f"{what}: {when}" + (f" ({outcome.detail})" if outcome.detail else ""))
    return {"mac": outcome.mac, "applied": outcome.applied, "detail": outcome.detail}


@job_handler("domain.nic.attach", permission="domain.edit")
def domain_nic_attach_job(ctx: JobContext) -> dict[str, Any]:
    domain = _domain(ctx)
    request = NicAttachRequest.model_validate(ctx.params)
    nic = request.nic
    ctx.progress(20, f"Attaching a card on {nic.source} {nic.name} to {domain.name}")

    async def attach(client: AgentClient) -> NicOutcome:
        return await client.attach_nic(domain.uuid, request)

    return _nic_said(
        ctx, domain, _agent(ctx, domain, attach), f"card {nic.mac} on {nic.source} {nic.name} attached"
    )


@job_handler("domain.nic.detach", permission="domain.edit")
def domain_nic_detach_job(ctx: JobContext) -> dict[str, Any]:
    domain = _domain(ctx)
    mac = str(ctx.params["mac"])
    ctx.progress(20, f"Detaching the card {mac} from {domain.name}")

    async def detach(client: AgentClient) -> NicOutcome:
        try:
            return await client.detach_nic(domain.uuid, mac)
        except AgentNotFound:
            # Gone already: a retry after the agent restarted (and forgot the first answer), or
            # unplugged behind Domus's back. What was asked is so; the domain as it is now.
            info = await client.get_domain(domain.uuid)
            if any(nic.mac == mac for nic in info.nics):
                raise
            return NicOutcome(domain=info, mac=mac, applied="now", detail=f"{mac} was already detached")

    return _nic_said(ctx, domain, _agent(ctx, domain, detach), f"card {mac} detached")


@job_handler("domain.nic.change", permission="domain.edit")
def domain_nic_change_job(ctx: JobContext) -> dict[str, Any]:
    domain = _domain(ctx)
    params = dict(ctx.params)
    mac = str(params.pop("card"))
    change = NicChangeRequest.model_validate(params)
    said = ", ".join(f"{k} {v}" for k, v in change.model_dump(exclude_none=True).items())
    ctx.progress(20, f"Changing the card {mac} of {domain.name}: {said}")

    async def apply(client: AgentClient) -> NicOutcome:
        return await client.change_nic(domain.uuid, mac, change)

    return _nic_said(ctx, domain, _agent(ctx, domain, apply), f"card {mac}: {said}")
