"""The ISO and image library's way in: uploads that resume, and fetches from a URL by the agent.

An upload is tus (https://tus.io/protocols/resumable-upload): the browser (tus-js-client) or
`curl` creates it with its length and where it goes (POST /api/v1/uploads/), then sends the
bytes with PATCH from the offset the console last confirmed, asking HEAD where to go on after a
dropped connection or a restarted console. The bytes pass through the console as they arrive
(hosts.tus: never held whole, never written to the console's disk) to the host's agent, which
writes them under a hidden name beside the pool's volumes, computes their SHA-256 on the way,
checks the pool's free space before and during, and renames the file when the last byte is in.
The agent is the truth about how many bytes it holds; the console's row (hosts.models.Upload)
is who asked, for whom, and what came of it. A fetch is the same file filled by the agent from
an http(s) or ftp URL (its SSRF guard, size limit, optional expected SHA-256), run as a job.

Who may: `media.upload` reaching the host. The volume is the team's the upload is for (a team in
which the uploader holds `media.upload`), or, for those who manage the host, the site's library
(read-only media anyone who may create a domain can use). Only the uploader sends its bytes.
An upload nobody touched for UPLOAD_EXPIRY_SECONDS is cancelled (and its bytes removed by the
agent, which also sweeps on its own)."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydantic import ValidationError

from agent.client import AgentError, AgentNotFound
from agent.protocol import VOLUME_NAME, FetchRequest, UploadCreateRequest, UploadStatus
from console.access.models import Team
from console.access.policy import has_perm, reach
from console.access.quotas import quota_check
from console.audit.services import Origin, audit_record
from console.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from console.jobs.models import Job
from console.jobs.periodic import periodic
from console.jobs.services import job_enqueue
from domains.models import Volume
from hosts.agent import run_agent
from hosts.models import Host, Upload
from hosts.pool_volumes import agent_refusal
from hosts.pools import pool_of
from hosts.selectors import host_list

# Pools whose volumes are files in a directory of the host: where an upload can be renamed.
UPLOAD_POOL_TYPES = ("dir", "fs", "netfs")
MAX_LENGTH = 4 << 40  # 4 TiB, the agent's own bound
UPLOAD_EXPIRY_SECONDS = getattr(settings, "DOMUS_UPLOAD_EXPIRY_SECONDS", 24 * 3600)
AGENT_TIMEOUT_SECONDS = 15.0
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _fields(**problems: str) -> dict[str, list[str]]:
    return {field: [message] for field, message in problems.items()}


def parse_metadata(header: str | None) -> dict[str, str]:
    """tus's Upload-Metadata: `key base64value,key2 base64value2` (a value may be empty)."""
    found: dict[str, str] = {}
    for pair in (header or "").split(","):
        if not pair.strip():
            continue
        key, _, value = pair.strip().partition(" ")
        try:
            found[key] = base64.b64decode(value.strip(), validate=True).decode() if value.strip() else ""
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidInput(
                "Invalid Upload-Metadata.",
                fields=_fields(**{key or "metadata": "must be base64 of UTF-8 text"}),
            ) from exc
    return found


def _host(actor: Any, value: Any) -> Host:
    try:
        host_id = int(value)
    except (TypeError, ValueError):
        raise InvalidInput("Say which host.", fields=_fields(host="must be a host's id")) from None
    host = host_list(user=actor).filter(pk=host_id).first()
    if host is None:
        raise NotFound("No such host.")
    if not has_perm(actor, "media.upload", host):
        raise PermissionDenied(f"You may not put media in the pools of {host.name}.")
    return host


def _pool(host: Host, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput("Say which pool.", fields=_fields(pool="must be one of the host's pools"))
    row = pool_of(host, name)
    if row.get("type") not in UPLOAD_POOL_TYPES:
        raise InvalidInput(
            f"Uploads go to directory pools ({', '.join(UPLOAD_POOL_TYPES)}); {name} is {row.get('type')}.",
            fields=_fields(pool="must be a directory pool"),
        )
    if not row.get("active"):
        raise Conflict(f"Storage pool {name!r} is not running.")
    return name


def _name(value: Any) -> str:
    if not isinstance(value, str) or not re.match(VOLUME_NAME, value) or ".." in value:
        raise InvalidInput(
            "Invalid volume name.",
            fields=_fields(name="letters, digits, '_', '.', '+' or '-', up to 255, not starting with '.'"),
        )
    return value


def _owner(actor: Any, host: Host, team: Any, library: Any) -> tuple[Team | None, bool]:
    """Whose the volume will be: (team, False), or (None, True) for the site's library. A team
    named wins over the library; with neither, a host's manager adds to the library and one who
    uploads for a single team uploads for it."""
    r = reach(actor, "media.upload")
    if team not in (None, ""):
        try:
            team_id = int(team)
        except (TypeError, ValueError):
            raise InvalidInput("Invalid team.", fields=_fields(team="must be a team's id")) from None
        found = Team.objects.filter(pk=team_id).first()
        if found is None or not (r.site or host.pk in r.hosts or team_id in r.teams):
            raise InvalidInput("Invalid team.", fields=_fields(team="must be a team you upload for"))
        return found, False
    manages = has_perm(actor, "host.manage", host)
    if library in (True, "1", "true", "yes") or (library in (None, "") and manages):
        if not manages:
            raise PermissionDenied(f"Only those who manage {host.name} add to the site's library.")
        return None, True
    if len(r.teams) == 1:
        return Team.objects.get(pk=next(iter(r.teams))), False
    raise InvalidInput("Say which team the volume is for.", fields=_fields(team="must be one of your teams"))


def _length(value: Any) -> int:
    try:
        length = int(value)
    except (TypeError, ValueError):
        length = -1
    if length < 1 or length > MAX_LENGTH:
        raise InvalidInput(
            "Invalid Upload-Length.", fields=_fields(length=f"must be a size in bytes from 1 to {MAX_LENGTH}")
        )
    return length


def _unfinished_to(host: Host, pool: str, name: str) -> None:
    if Upload.objects.filter(
        host=host, pool=pool, name=name, state__in=(Upload.State.UPLOADING, Upload.State.FETCHING)
    ).exists():
        raise Conflict(f"{name} is already on its way into {pool}; resume that upload or cancel it.")


def upload_create(*, actor: Any, data: dict[str, Any], origin: Origin | None = None) -> Upload:
    """A new upload (nothing sent yet): its row, and the agent's file to receive it."""
    host = _host(actor, data.get("host"))
    pool = _pool(host, data.get("pool"))
    filename = str(data.get("filename") or "")[:255]
    name = _name(data.get("name") or filename)
    length = _length(data.get("length"))
    team, library = _owner(actor, host, data.get("team"), data.get("library"))
    if team is not None:  # the team's volume: its disk quota counts it
        quota_check(team, vcpus=0, memory_mib=0, disk_gib=length / (1 << 30))
    upload_id = uuid.uuid4()
    try:
        UploadCreateRequest(id=upload_id.hex, name=name, length=length)
    except ValidationError as exc:
        raise InvalidInput(
            "Invalid upload.", fields={str(e["loc"][0]): [e["msg"]] for e in exc.errors()}
        ) from exc
    with transaction.atomic():
        _unfinished_to(host, pool, name)
        upload = Upload.objects.create(
            id=upload_id,
            host=host,
            pool=pool,
            name=name,
            filename=filename,
            length=length,
            team=team,
            library=library,
            created_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
    try:
        status = run_agent(
            host,
            lambda client: client.create_upload(pool, upload_id.hex, name, length),
            timeout=AGENT_TIMEOUT_SECONDS,
        )
    except AgentError as exc:
        upload.delete()
        raise agent_refusal(host, exc) from exc
    upload_observe(upload, status)
    audit_record(
        action="media.upload",
        actor=actor,
        origin=origin,
        obj=host,
        changes={"upload": upload_id.hex, "pool": pool, "name": name, "length": length, **_whose(upload)},
    )
    return upload


def _whose(upload: Upload) -> dict[str, Any]:
    return {"library": True} if upload.library else {"team": upload.team.name if upload.team else None}


def upload_get(*, actor: Any, upload_id: Any) -> Upload:
    """The upload, for the one who started it or those who manage its host (404 for others)."""
    try:
        key = uuid.UUID(str(upload_id))
    except ValueError:
        raise NotFound("No such upload.") from None
    upload = Upload.objects.select_related("host", "team", "created_by").filter(pk=key).first()
    if upload is None or not (
        (upload.created_by_id is not None and upload.created_by_id == getattr(actor, "pk", None))
        or has_perm(actor, "host.manage", upload.host)
    ):
        raise NotFound("No such upload.")
    return upload


def upload_list(*, actor: Any, host: Host | None = None) -> list[Upload]:
    """The actor's uploads (and, on a host they manage, everyone's), newest first, at most 100."""
    rows = Upload.objects.select_related("host", "team", "created_by")
    if host is not None:
        rows = rows.filter(host=host)
        if not has_perm(actor, "host.manage", host):
            rows = rows.filter(created_by=actor)
    else:
        rows = rows.filter(created_by=actor)
    return list(rows[:100])


def upload_observe(upload: Upload, status: UploadStatus) -> Upload:
    """Record what the agent says of the upload; the first time it says complete, the volume is
    recorded as the upload's team's (or the library's) and the audit trail says so."""
    fields: dict[str, Any] = {"offset": status.offset}
    if status.length is not None:
        fields["length"] = status.length
    if status.state == "failed" and not upload.done:
        fields |= {"state": Upload.State.FAILED, "error": status.error or "failed"}
    with transaction.atomic():
        row = Upload.objects.select_for_update().get(pk=upload.pk)
        finishing = status.state == "complete" and row.state != Upload.State.COMPLETE
        if finishing:
            fields |= {
                "state": Upload.State.COMPLETE,
                "sha256": status.sha256 or "",
                "path": status.path or "",
                "completed_at": timezone.now(),
            }
        Upload.objects.filter(pk=row.pk).update(**fields, updated_at=timezone.now())
        row.refresh_from_db()
        if finishing and row.path:
            Volume.objects.update_or_create(
                host=row.host,
                path=row.path,
                defaults={
                    "team": row.team,
                    "library": row.library,
                    "origin": Volume.Origin.POOL,
                    "domain": None,
                    "capacity_bytes": row.length,
                },
            )
            audit_record(
                action="media.upload.complete",
                actor=row.created_by,
                obj=row.host,
                changes={"upload": row.pk.hex, "path": row.path, "sha256": row.sha256, "length": row.length},
            )
    return row


def upload_refresh(upload: Upload) -> Upload:
    """Ask the agent how far the upload is (HEAD, and the page after a restart)."""
    if upload.done:
        return upload
    try:
        status = run_agent(
            upload.host,
            lambda client: client.upload_status(upload.pool, upload.pk.hex),
            timeout=AGENT_TIMEOUT_SECONDS,
        )
    except AgentNotFound:
        # The agent no longer has it (expired there, or removed by hand): nothing to resume.
        Upload.objects.filter(pk=upload.pk).update(
            state=Upload.State.EXPIRED, error="The host no longer holds this upload's bytes."
        )
        upload.refresh_from_db()
        return upload
    except AgentError as exc:
        raise agent_refusal(upload.host, exc) from exc
    row = upload_observe(upload, status)
    if status.state in ("complete", "failed"):
        upload_forget_on_agent(row)
    return row


def upload_forget_on_agent(upload: Upload) -> None:
    """The console has recorded how an upload or fetch ended (or gave it up): the agent drops its
    record of it and any bytes not yet made a volume (never a volume). Best effort: the agent's
    own expiry removes what nobody claimed."""
    try:
        run_agent(
            upload.host,
            lambda client: client.delete_upload(upload.pool, upload.pk.hex),
            timeout=AGENT_TIMEOUT_SECONDS,
        )
    except AgentError:
        pass


def upload_cancel(*, actor: Any, upload: Upload, origin: Origin | None = None) -> Upload:
    """Stop an upload or a fetch and remove its bytes (a complete one keeps its volume)."""
    if upload.state == Upload.State.COMPLETE:
        raise Conflict(f"{upload.name} is complete: delete the volume from its pool instead.")
    try:
        run_agent(
            upload.host,
            lambda client: client.delete_upload(upload.pool, upload.pk.hex),
            timeout=AGENT_TIMEOUT_SECONDS,
        )
    except AgentNotFound:
        pass  # already gone there
    except AgentError as exc:
        raise agent_refusal(upload.host, exc) from exc
    if not upload.done:
        Upload.objects.filter(pk=upload.pk).update(state=Upload.State.CANCELLED, updated_at=timezone.now())
    audit_record(
        action="media.upload.cancel",
        actor=actor,
        origin=origin,
        obj=upload.host,
        changes={"upload": upload.pk.hex, "name": upload.name, "offset": upload.offset},
    )
    upload.refresh_from_db()
    return upload


def may_send(user: Any, upload: Upload) -> str | None:
    """Why `user` may not send this upload's bytes now (None: they may)."""
    if upload.created_by_id is None or upload.created_by_id != getattr(user, "pk", None):
        return "No such upload."
    if not has_perm(user, "media.upload", upload.host):
        return f"You may no longer put media in the pools of {upload.host.name}."
    if upload.done:
        return f"This upload is {upload.get_state_display().lower()}."
    return None


@transaction.atomic
def upload_fetch(*, actor: Any, data: Any, origin: Origin | None = None) -> Job:
    """Have the host's agent fetch an ISO or image from a URL into a pool: a job."""
    if not isinstance(data, dict):
        raise InvalidInput("Send the fetch as a JSON object.")
    host = _host(actor, data.get("host"))
    pool = _pool(host, data.get("pool"))
    url = data.get("url")
    if not isinstance(url, str) or not re.match(r"^(https?|ftp)://[^\s]{1,2040}$", url):
        raise InvalidInput("Invalid URL.", fields=_fields(url="must be an http, https or ftp URL"))
    name = _name(data.get("name") or url.rstrip("/").rsplit("/", 1)[-1].split("?")[0])
    expected = str(data.get("sha256") or "").strip().lower()
    if expected and not SHA256.match(expected):
        raise InvalidInput(
            "Invalid checksum.", fields=_fields(sha256="must be 64 hexadecimal digits (SHA-256)")
        )
    max_bytes = _length(data.get("max_bytes") or 64 << 30)
    team, library = _owner(actor, host, data.get("team"), data.get("library"))
    _unfinished_to(host, pool, name)
    upload = Upload.objects.create(
        id=uuid.uuid4(),
        host=host,
        pool=pool,
        name=name,
        source=Upload.Source.URL,
        source_url=_shown(url),
        state=Upload.State.FETCHING,
        expected_sha256=expected,
        team=team,
        library=library,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    try:
        FetchRequest(id=upload.pk.hex, name=name, url=url, max_bytes=max_bytes, sha256=expected or None)
    except ValidationError as exc:
        raise InvalidInput(
            "Invalid fetch.", fields={str(e["loc"][0]): [e["msg"]] for e in exc.errors()}
        ) from exc
    # The URL may carry credentials: the job's params keep it (the agent needs it), the audit
    # trail and the row show it without them.
    job = job_enqueue(
        kind="media.fetch",
        actor=actor,
        host=host,
        target_name=name,
        params={"upload": upload.pk.hex, "pool": pool, "name": name, "url": url, "max_bytes": max_bytes},
    )
    Upload.objects.filter(pk=upload.pk).update(job=job)
    audit_record(
        action="media.fetch",
        actor=actor,
        origin=origin,
        obj=host,
        changes={
            "upload": upload.pk.hex,
            "pool": pool,
            "name": name,
            "url": upload.source_url,
            "job": job.pk,
        },
    )
    return job


def _shown(url: str) -> str:
    """The URL without user, password or query (which may hold a token)."""
    scheme, _, rest = url.partition("://")
    where = rest.split("/", 1)
    netloc = where[0].rsplit("@", 1)[-1]
    path = ("/" + where[1]) if len(where) > 1 else ""
    return f"{scheme}://{netloc}{path.split('?', 1)[0]}"


@periodic("uploads.expire", every=600)
def uploads_expire(now: Any = None) -> int:
    """Cancel uploads nobody touched for UPLOAD_EXPIRY_SECONDS (their agents are told, when they
    answer; each agent also sweeps its own leftovers). Fetches belong to their jobs."""
    now = now or timezone.now()
    stale = Upload.objects.filter(
        state=Upload.State.UPLOADING, updated_at__lt=now - timedelta(seconds=UPLOAD_EXPIRY_SECONDS)
    ).select_related("host")[:100]
    count = 0
    hours = UPLOAD_EXPIRY_SECONDS / 3600
    for upload in stale:
        upload_forget_on_agent(upload)  # unreachable or gone: the agent's own sweep removes the bytes
        count += Upload.objects.filter(pk=upload.pk, state=Upload.State.UPLOADING).update(
            state=Upload.State.EXPIRED, error=f"Abandoned: no bytes for {hours:g} hours."
        )
    return count


def upload_form(user: Any, host: Host, pool: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What an upload form on a page offers `user` for `host` (and `pool`): None when they may
    not upload there; else the teams they may upload for and whether the library is theirs."""
    if not has_perm(user, "media.upload", host):
        return None
    if pool is not None and (pool.get("type") not in UPLOAD_POOL_TYPES or not pool.get("active")):
        return None
    r = reach(user, "media.upload")
    everywhere = r.site or host.pk in r.hosts
    teams = Team.objects.all() if everywhere else Team.objects.filter(pk__in=r.teams)
    return {
        "teams": list(teams.order_by("name").values("id", "name")[:200]),
        "library": has_perm(user, "host.manage", host),
    }


def uploaded_checksums(hosts: Any) -> dict[int, dict[str, str]]:
    """The SHA-256 of each volume of these hosts that came in by upload or fetch, by host and
    path: one query for a page of hosts."""
    rows = Upload.objects.filter(host__in=hosts, state=Upload.State.COMPLETE).exclude(path="")
    found: dict[int, dict[str, str]] = {}
    for host_id, path, digest in rows.order_by("completed_at").values_list("host_id", "path", "sha256"):
        found.setdefault(host_id, {})[path] = digest
    return found
