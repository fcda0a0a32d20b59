from __future__ import annotations

import ipaddress
import time
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone

from console.access.policy import explain, has_site_perm
from console.audit.services import Origin, audit_record
from console.errors import InvalidInput, PermissionDenied
from console.jobs.models import Job
from console.jobs.services import job_enqueue
from console.realtime.events import publish_on_commit
from hosts.events import host_event, host_resources_event, resources_changed
from hosts.models import Host


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def require_host_manage(actor: Any) -> None:
    """Adding, changing and removing hosts is for site-wide host managers (None: the system)."""
    if actor is not None and not has_site_perm(actor, "host.manage"):
        raise PermissionDenied(explain(actor, "host.manage"))


def is_loopback_url(url: str) -> bool:
    return _is_loopback(urlsplit(url).hostname or "")


def agent_url_problem(url: str) -> str | None:
    """Why the console must not send a host's secret to `url`, or None. The secret never
    crosses a network in clear text: plain http only to loopback (an SSH tunnel's end, say)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return None
    return "must be https://, or http:// to a loopback address (127.0.0.1, ::1, localhost)"


@transaction.atomic
def host_register(
    *, name: str, url: str, secret: str, actor: Any = None, origin: Origin | None = None
) -> Host:
    """Add (or update the address and secret of) a host whose agent is reachable at `url`.

    This is for loopback agents with a fixed secret (`make run`'s own, or one at the end of an
    SSH tunnel). Remote hosts are enrolled with a pairing code (hosts.enrolment.host_enrol).
    """
    require_host_manage(actor)
    if problem := agent_url_problem(url):
        raise InvalidInput("Unsafe agent URL.", fields={"url": [problem]})
    if not url.startswith("http://"):
        raise InvalidInput(
            "Use a pairing code for TLS agents.",
            fields={"url": ["an https:// agent is added with the pairing code `domus-agent init` prints"]},
        )
    host, created = Host.objects.update_or_create(name=name, defaults={"url": url, "secret": secret})
    publish_on_commit(host_event(host))
    # The secret is never recorded, only that it was set.
    changes = {"url": url, "secret": "(set)", "created": created}
    audit_record(action="host.register", actor=actor, origin=origin, obj=host, changes=changes)
    return host


@transaction.atomic
def host_observe(
    *, host_id: int, state: str, detail: str = "", facts: dict[str, Any] | None = None
) -> Host | None:
    """Record what hostwatch saw of a host; publishes an event when the state changed."""
    host = Host.objects.select_for_update().filter(pk=host_id).first()
    if host is None:
        return None
    changed = host.state != state or host.state_detail != detail
    host.state = state
    host.state_detail = detail
    fields = ["state", "state_detail"]
    if state == Host.State.ONLINE:
        host.last_seen_at = timezone.now()
        fields.append("last_seen_at")
    if facts is not None:
        host.facts = facts
        fields.append("facts")
    host.save(update_fields=fields)
    if changed or facts is not None:
        publish_on_commit(host_event(host))
    return host


@transaction.atomic
def host_set_maintenance(
    *, host: Host, on: bool, reason: str = "", actor: Any = None, origin: Origin | None = None
) -> Host:
    """In maintenance a host receives no new domains; what runs on it is left alone."""
    require_host_manage(actor)
    host = Host.objects.select_for_update().get(pk=host.pk)
    host.maintenance = on
    host.maintenance_reason = reason[:255] if on else ""
    host.save(update_fields=["maintenance", "maintenance_reason"])
    publish_on_commit(host_event(host))
    audit_record(
        action="host.maintenance",
        actor=actor,
        origin=origin,
        obj=host,
        changes={"maintenance": on, "reason": host.maintenance_reason},
    )
    return host


def host_refresh(*, host: Host, actor: Any) -> Job:
    """Re-read the host's capabilities and resources now (a job: it waits on the agent)."""
    require_host_manage(actor)
    return job_enqueue(kind="host.refresh", actor=actor, host=host, target_name=host.name)


@transaction.atomic
def host_resources_observed(*, host_id: int, resources: dict[str, Any]) -> Host | None:
    """Record a host's pools, networks and bridges as its agent reports them now (after a pool
    job, or a change it saw behind Domus's back), and tell the pages when they changed."""
    host = Host.objects.select_for_update().filter(pk=host_id).first()
    if host is None:
        return None
    before = host.resources
    # Newer than any periodic stats hostwatch has received so far (Host.resources): a batch of
    # stats read before this change and written after it does not hide it.
    host.facts = {**host.facts, "resources": resources, "resources_at": time.time()}
    host.save(update_fields=["facts"])
    if resources_changed(before, resources):
        publish_on_commit(host_resources_event(host))
    return host
