"""GET /healthz: database, Redis, worker and agent reachability as JSON (200 only when all are up)."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse

from console.celery import app as celery_app
from hosts.models import Host


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
        replies = celery_app.control.ping(timeout=1.0, limit=1)
    except (redis.RedisError, OSError) as exc:
        return {"ok": False, "error": str(exc)}
    replies = replies or []
    return {"ok": bool(replies), "workers": [name for reply in replies for name in reply]}


def _agents(*, detailed: bool) -> dict[str, Any]:
    # hostwatch marks a host offline once its agent has been silent for a few seconds.
    hosts = list(Host.objects.values_list("name", "state"))
    online = sum(1 for _, state in hosts if state == Host.State.ONLINE)
    result: dict[str, Any] = {"ok": online == len(hosts), "online": online, "total": len(hosts)}
    if detailed:  # host names only for signed-in callers
        result["hosts"] = dict(hosts)
    return result


def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _database(), "redis": _redis(), "worker": _worker()}
    detailed = request.user.is_authenticated
    checks["agents"] = (
        _agents(detailed=detailed) if checks["database"]["ok"] else {"ok": False, "error": "no database"}
    )
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"ok": ok, **checks}, status=200 if ok else 503)
