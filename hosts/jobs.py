"""Job handlers for work on a host (registered with the runner when the app loads)."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Literal, cast

from agent.client import AgentClient, AgentError, AgentNotFound, is_transient
from agent.protocol import (
    DhcpSettings,
    FetchRequest,
    NetworkResult,
    NetworkSpec,
    PoolResult,
    PoolSpec,
    UploadStatus,
    VolumeCreateRequest,
    VolumeResult,
)
from console.jobs.runner import JobCancelled, JobContext, JobFailed, job_handler
from domains.models import Volume
from hosts.agent import run_agent, run_agent_for_job
from hosts.models import Host, Upload
from hosts.pools import Users, pools_of, volume_path
from hosts.services import host_observe, host_resources_observed
from hosts.templatetags.units import binary as binary_size
from hosts.uploads import upload_forget_on_agent, upload_observe

logger = logging.getLogger(__name__)


@job_handler("host.refresh")
def host_refresh_job(ctx: JobContext) -> dict[str, Any]:
    host = ctx.job.host
    if host is None:
        raise JobFailed("The host was removed before the job ran.")
    ctx.progress(10, "Reading capabilities and resources from the agent")
    facts = run_agent(host, lambda client: client.host_refresh())
    host_observe(host_id=host.pk, state=Host.State.ONLINE, facts=facts.model_dump(mode="json"))
    caps = facts.capabilities
    modes = [m.mode for m in caps.modes if m.available] if caps else []
    ctx.log(f"{facts.hypervisor} on {facts.arch}, modes: {', '.join(modes) or 'none'}")
    return {"hypervisor": facts.hypervisor, "modes": modes}


def _pool_result_recorded(ctx: JobContext, host: Host, result: PoolResult) -> dict[str, Any]:
    """Say what the agent did, and record the host's pools as they are now (its own live update
    follows too, but the page should not wait for it)."""
    if result.detail:
        ctx.log(result.detail)
    _resources_recorded(host)
    return {"pool": result.pool.model_dump(mode="json") if result.pool else None, "detail": result.detail}


def _job_host(ctx: JobContext) -> Host:
    host = ctx.job.host
    if host is None:
        raise JobFailed("The host was removed before the job ran.")
    return host


@job_handler("pool.create", permission="host.manage")
def pool_create_job(ctx: JobContext) -> dict[str, Any]:
    host = _job_host(ctx)
    spec = PoolSpec.model_validate(ctx.job.params)
    steps = ["define"] + (["build"] if spec.build else []) + (["start"] if spec.start else [])
    ctx.progress(10, f"Asking {host.name} to {', '.join(steps)} the {spec.type} pool {spec.name}")
    result = run_agent_for_job(ctx, host, lambda client: client.define_pool(spec))
    return _pool_result_recorded(ctx, host, result)


def _pool_action_job(ctx: JobContext, *, action: str) -> dict[str, Any]:
    host = _job_host(ctx)
    params = ctx.job.params
    name = params["pool"]
    ctx.progress(10, f"Asking {host.name} to {action} the pool {name}")

    async def op(client: AgentClient) -> PoolResult:
        if action == "autostart":
            return await client.set_pool_autostart(name, bool(params["autostart"]))
        if action == "delete":
            return await client.delete_pool(name, delete_storage=bool(params.get("delete_storage")))
        return await client.pool_action(name, cast(Literal["start", "stop", "refresh"], action))

    return _pool_result_recorded(ctx, host, run_agent_for_job(ctx, host, op))


# start, stop, refresh, autostart and delete: one handler each, the same conversation.
for _action in ("start", "stop", "refresh", "autostart", "delete"):
    job_handler(f"pool.{_action}", permission="host.manage")(partial(_pool_action_job, action=_action))


# -- virtual networks (hosts/networks.py) ---------------------------------------------------------


def _network_result_recorded(ctx: JobContext, host: Host, result: NetworkResult) -> dict[str, Any]:
    """Say what the agent did, and record the host's networks as they are now."""
    if result.detail:
        ctx.log(result.detail)
    _resources_recorded(host)
    network = result.network.model_dump(mode="json") if result.network else None
    return {"network": network, "detail": result.detail}


@job_handler("network.create", permission="host.manage")
def network_create_job(ctx: JobContext) -> dict[str, Any]:
    host = _job_host(ctx)
    spec = NetworkSpec.model_validate(ctx.job.params)
    steps = ["define"] + (["start"] if spec.start else [])
    ctx.progress(10, f"Asking {host.name} to {' and '.join(steps)} the {spec.mode} network {spec.name}")
    result = run_agent_for_job(ctx, host, lambda client: client.define_network(spec))
    return _network_result_recorded(ctx, host, result)


def _network_action_job(ctx: JobContext, *, action: str) -> dict[str, Any]:
    host = _job_host(ctx)
    params = ctx.job.params
    name = params["network"]
    ctx.progress(10, f"Asking {host.name} to {action} the network {name}")

    async def op(client: AgentClient) -> NetworkResult:
        if action == "autostart":
            return await client.set_network_autostart(name, bool(params["autostart"]))
        if action == "delete":
            return await client.delete_network(name)
        if action == "dhcp":
            settings = DhcpSettings.model_validate({k: v for k, v in params.items() if k != "network"})
            return await client.update_network_dhcp(name, settings)
        return await client.network_action(name, cast(Literal["start", "stop"], action))

    return _network_result_recorded(ctx, host, run_agent_for_job(ctx, host, op))


for _action in ("start", "stop", "autostart", "delete", "dhcp"):
    job_handler(f"network.{_action}", permission="host.manage")(partial(_network_action_job, action=_action))


# -- volumes of a pool (hosts/pool_volumes.py) -----------------------------------------------------


def _volume_recorded(ctx: JobContext, host: Host, result: VolumeResult, **record: Any) -> dict[str, Any]:
    """Say what the agent did; record a new volume (the site's unless `record` says whose)."""
    if result.detail:
        ctx.log(result.detail)
    volume = result.volume
    if volume is not None and record:
        Volume.objects.get_or_create(
            host=host, path=volume.path, defaults={**record, "capacity_bytes": volume.capacity_bytes}
        )
    if volume is not None:  # its size as it is now: what its team's disk quota counts
        Volume.objects.filter(host=host, path=volume.path).update(capacity_bytes=volume.capacity_bytes)
    _resources_recorded(host)
    return {"volume": volume.model_dump(mode="json") if volume else None, "detail": result.detail}


def _resources_recorded(host: Host) -> None:
    """Record the host's pools and networks as they are now. The work is done by then: an agent that cannot
    answer this last question does not make it fail (its next report, or hostwatch, tells)."""
    try:
        facts = run_agent(host, lambda client: client.host())
    except AgentError:
        logger.warning("host %s: resources not read after a job; its next report will say", host.name)
        return
    if facts.resources is not None:
        host_resources_observed(host_id=host.pk, resources=facts.resources.model_dump(mode="json"))


@job_handler("volume.create", permission="host.manage")
def volume_create_job(ctx: JobContext) -> dict[str, Any]:
    host = _job_host(ctx)
    params = dict(ctx.job.params)
    pool = params.pop("pool")
    request = VolumeCreateRequest.model_validate(params)
    ctx.progress(10, f"Creating {request.name} ({request.capacity_bytes / 2**30:.1f} GiB) in {pool}")
    result = run_agent_for_job(ctx, host, lambda client: client.create_volume(pool, request))
    return _volume_recorded(ctx, host, result, origin=Volume.Origin.POOL)


@job_handler("volume.resize", permission="host.manage")
def volume_resize_job(ctx: JobContext) -> dict[str, Any]:
    host = _job_host(ctx)
    params = ctx.job.params
    ctx.progress(10, f"Growing {params['volume']} to {params['capacity_bytes'] / 2**30:.1f} GiB")
    result = run_agent_for_job(
        ctx,
        host,
        lambda client: client.resize_volume(params["pool"], params["volume"], params["capacity_bytes"]),
    )
    return _volume_recorded(ctx, host, result)


@job_handler("volume.clone", permission="host.manage")
def volume_clone_job(ctx: JobContext) -> dict[str, Any]:
    host = _job_host(ctx)
    params = ctx.job.params
    ctx.progress(10, f"Copying {params['volume']} to {params['new_name']} (a full copy: this takes a while)")
    source = Volume.objects.filter(host=host, path=_pool_path(host, params["pool"], params["volume"])).first()
    result = run_agent_for_job(
        ctx, host, lambda client: client.clone_volume(params["pool"], params["volume"], params["new_name"])
    )
    # A copy of a team's volume is that team's; of the site's, the site's.
    return _volume_recorded(
        ctx, host, result, origin=Volume.Origin.POOL, team_id=source.team_id if source else None
    )


@job_handler("volume.delete", permission="host.manage")
def volume_delete_job(ctx: JobContext) -> dict[str, Any]:
    host = _job_host(ctx)
    params = ctx.job.params
    ctx.progress(10, f"Deleting {params['volume']} from {params['pool']}")
    path = _pool_path(host, params["pool"], params["volume"])
    _refuse_if_used(host, path)
    result = run_agent_for_job(
        ctx, host, lambda client: client.delete_volume(params["pool"], params["volume"])
    )
    Volume.objects.filter(host=host, path=path).delete()
    return _volume_recorded(ctx, host, result)


def _pool_path(host: Host, pool: str, name: str) -> str:
    """Where the volume lies, as the host last reported the pool (a pool gone meanwhile: "")."""
    return volume_path(next((p for p in pools_of(host) if p.get("name") == pool), {}), name)


def _refuse_if_used(host: Host, path: str) -> None:
    """Checked again when the job runs: a domain may have taken the volume up since."""
    if users := Users.of(host).of_path(path):
        raise JobFailed(f"{path} is used by {', '.join(d.name for d in users)} now; it was kept.")


def pool_holding(host: Host, path: str) -> tuple[str, str] | None:
    """(pool, volume name) of a path directly in one of the host's pools' directories."""
    for pool in host.resources.get("pools") or []:
        directory = (pool.get("path") or "").rstrip("/")
        if directory and path.startswith(directory + "/") and "/" not in path[len(directory) + 1 :]:
            return pool["name"], path[len(directory) + 1 :]
    return None


async def _delete_volume(client: AgentClient, *, pool: str, name: str) -> VolumeResult:
    return await client.delete_volume(pool, name)


@job_handler("volume.orphans", permission="host.manage")
def volume_orphans_job(ctx: JobContext) -> dict[str, Any]:
    host = _job_host(ctx)
    wanted = ctx.job.params["volumes"]
    deleted, kept = [], []
    for index, item in enumerate(wanted):
        path = item["path"]
        ctx.progress(5 + 90 * index // len(wanted), f"Removing {path}")
        if Users.of(host).of_path(path):
            kept.append(path)
            ctx.log(f"Kept {path}: a domain uses it now")
            continue
        where = pool_holding(host, path)
        if where is None:
            kept.append(path)
            ctx.log(f"Kept {path}: it is in none of {host.name}'s pools")
            continue
        pool, name = where
        try:
            run_agent_for_job(ctx, host, partial(_delete_volume, pool=pool, name=name))
        except AgentNotFound:
            ctx.log(f"{path} was already gone")
        except AgentError as exc:
            kept.append(path)
            ctx.log(f"Kept {path}: {exc.detail}")
            continue
        Volume.objects.filter(host=host, path=path, domain__isnull=True).delete()
        deleted.append(path)
        ctx.log(f"Deleted {path}")
    _resources_recorded(host)
    if kept and not deleted:
        raise JobFailed(f"None of the {len(wanted)} orphaned volume(s) could be removed; the log says why.")
    return {"deleted": deleted, "kept": kept}


# How often a fetch's job asks the agent how far it is.
FETCH_POLL_SECONDS = 1.0


def _rate(status: UploadStatus) -> str:
    done = binary_size(status.offset)
    whole = f" of {binary_size(status.length)}" if status.length else ""
    rate = f" at {binary_size(int(status.rate_bytes_per_s))}/s" if status.rate_bytes_per_s else ""
    return f"{done}{whole}{rate}"


@job_handler("media.fetch", permission="media.upload", cancellable=True)
def media_fetch_job(ctx: JobContext) -> dict[str, Any]:
    """The agent fetches a URL into a pool (its SSRF guard, size limit, checksum); this job
    starts it, follows it (progress, rate) and records the outcome on the upload's row."""
    host = _job_host(ctx)
    params = ctx.job.params
    upload = Upload.objects.get(pk=params["upload"])
    request = FetchRequest(
        id=upload.pk.hex,
        name=upload.name,
        url=params["url"],
        max_bytes=params["max_bytes"],
        sha256=upload.expected_sha256 or None,
    )
    pool, key = upload.pool, upload.pk.hex
    ctx.progress(2, f"Asking {host.name} to fetch {upload.source_url}")
    status = run_agent_for_job(ctx, host, lambda client: client.fetch_url(pool, request))
    lost_since: float | None = None
    while status.state == "fetching":
        upload = upload_observe(upload, status)
        share = 5 + 90 * status.offset // status.length if status.length else 5
        ctx.progress(min(95, share), f"Fetched {_rate(status)}")
        ctx.sleep(FETCH_POLL_SECONDS)
        if ctx.cancel_requested():
            run_agent(host, lambda client: client.delete_upload(pool, key))
            Upload.objects.filter(pk=upload.pk).update(state=Upload.State.CANCELLED)
            raise JobCancelled(f"Stopped at {binary_size(status.offset)}; what was fetched is removed.")
        try:
            status = run_agent(host, lambda client: client.upload_status(pool, key))
            lost_since = None
        except AgentError as exc:
            if not is_transient(exc) or ctx.seconds_left() <= 0:
                Upload.objects.filter(pk=upload.pk).update(state=Upload.State.FAILED, error=exc.detail)
                raise JobFailed(f"{host.name} could not say how the fetch went: {exc.detail}") from exc
            if lost_since is None:
                lost_since = time.monotonic()
                ctx.log(f"{host.name} cannot be asked now ({exc.detail}); waiting: it fetches on by itself")
    upload = upload_observe(upload, status)
    upload_forget_on_agent(upload)  # recorded here: the agent's record of it may go
    if status.state != "complete":
        raise JobFailed(f"The fetch of {upload.source_url} failed: {status.error or 'no reason given'}")
    ctx.log(f"{upload.path}: {binary_size(upload.length or 0)}, SHA-256 {upload.sha256}")
    _resources_recorded(host)
    return {"path": upload.path, "sha256": upload.sha256, "bytes": upload.length}
