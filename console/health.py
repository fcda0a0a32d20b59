"""GET /healthz: database, Redis, worker and agent reachability as JSON (200 only when all are up).

Anonymous callers (load balancers) get the verdicts; signed-in users also get names and errors.
It is always JSON, whatever is down (a 503 naming it), and never waits long on any part.
Under `make run` it also reports the launcher's supervision of each process (restarts, a part
given up on), from the state file the launcher keeps (console/supervisor.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from console.celery import app as celery_app
from console.jobs.dispatch import undispatched
from console.supervisor import supervised_processes
from hosts.models import Host

# hostwatch records a heartbeat every ~2 s; a host quiet for longer than this is not reachable,
# even if hostwatch itself died before it could mark the host offline.
HEARTBEAT_GRACE_SECONDS = 2.0


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True, "engine": connection.vendor}
    except DatabaseError as exc:
        return {"ok": False, "error": str(exc)}


def _redis() -> dict[str, Any]:
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1).ping()
        return {"ok": True}
    except (redis.RedisError, OSError) as exc:
        return {"ok": False, "error": str(exc)}


def _worker() -> dict[str, Any]:
    try:
        replies = celery_app.control.ping(timeout=1.0, limit=1) or []
    except (redis.RedisError, BrokerError, OSError) as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": bool(replies), "workers": [name for reply in replies for name in reply]}


def _outbox() -> dict[str, Any]:
    """Jobs accepted while the broker was away, not sent yet (the relay sends them)."""
    try:
        return {"ok": True, "undispatched": undispatched()}
    except DatabaseError as exc:
        return {"ok": False, "error": str(exc)}


def _agents() -> dict[str, Any]:
    fresh = timezone.now() - timedelta(
        seconds=settings.DOMUS_HOST_OFFLINE_AFTER_SECONDS + HEARTBEAT_GRACE_SECONDS
    )
    hosts = {
        name: state == Host.State.ONLINE and seen is not None and seen >= fresh
        for name, state, seen in Host.objects.values_list("name", "state", "last_seen_at")
    }
    online = sum(hosts.values())
    return {"ok": online == len(hosts), "online": online, "total": len(hosts), "hosts": hosts}


def _public(check: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in check.items() if k in ("ok", "engine", "online", "total", "undispatched")}


def _signed_in(request: HttpRequest) -> bool:
    try:
        return bool(request.user.is_authenticated)
    except DatabaseError:  # the session lives in the database
        return False


def livez(request: HttpRequest) -> JsonResponse:
    """GET /livez: this web process answers (it asks nothing else): a container's health check.
    /healthz is the console's health, which a web replica alone cannot fix."""
    return JsonResponse({"ok": True})


def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _database(), "redis": _redis(), "worker": _worker()}
    database_ok = checks["database"]["ok"]
    checks["agents"] = _agents() if database_ok else {"ok": False, "error": "no database"}
    checks["jobs"] = _outbox() if database_ok else {"ok": False, "error": "no database"}
    if (processes := supervised_processes(settings.DATA_DIR)) is not None:
        checks["processes"] = processes
    # One hypervisor host down must not take a web node out of a load balancer: the console is
    # healthy when its own parts are, and hostwatch is alive (some host is heard, if any exists).
    # `agents.ok` still says whether every host is online.
    agents = checks["agents"]
    hostwatch_alive = agents.get("total", 0) == 0 or agents.get("online", 0) > 0
    ok = all(checks[part]["ok"] for part in ("database", "redis", "worker")) and hostwatch_alive
    ok = ok and checks.get("processes", {}).get("ok", True)
    down = [part for part in ("database", "redis", "worker") if not checks[part]["ok"]]
    if not hostwatch_alive:
        down.append("hostwatch (no host is heard)")
    if not checks.get("processes", {}).get("ok", True):
        down.append("processes")
    if not _signed_in(request):
        checks = {name: _public(check) for name, check in checks.items()}
    body = {"ok": ok, **({"down": down} if down else {}), **checks}
    return JsonResponse(body, status=200 if ok else 503)
