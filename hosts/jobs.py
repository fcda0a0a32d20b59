"""Job handlers for work on a host (registered with the runner when the app loads)."""

from __future__ import annotations

from typing import Any

from console.jobs.runner import JobContext, JobFailed, job_handler
from hosts.agent import run_agent
from hosts.models import Host
from hosts.services import host_observe


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
