"""Failed sign-in counters and lockouts, kept in Redis so that every web process shares them.

Two counters, each a fixed window of DOMUS_LOGIN_WINDOW_SECONDS (default 900) starting at the
first failure:

- per username (case-folded; existing or not, so a refusal tells nothing about the account):
  the DOMUS_LOGIN_MAX_FAILURES-th failure (default 5) locks that username for
  DOMUS_LOGIN_LOCKOUT_SECONDS (default 900); while locked every attempt is refused, even with
  the right password, and is not checked at all;
- per client address: more than DOMUS_LOGIN_MAX_FAILURES_PER_IP failures (default 20) lock the
  address for DOMUS_LOGIN_LOCKOUT_SECONDS.

A wrong second-factor code is a failure like a wrong password. A completed sign-in clears the
username's counter (not the address's: one good account must not launder a guessing run).

Redis unreachable: sign-in is refused (fail closed) with `ThrottleUnavailable`; the console
cannot run jobs or events without Redis either.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import redis
from django.conf import settings
from django.utils import timezone

from console.errors import DomusError


class ThrottleUnavailable(DomusError):
    status = 503
    code = "unavailable"


@dataclass(frozen=True)
class Lockout:
    """A refusal: until when, and whether this very failure started it."""

    until: datetime
    started_now: bool = False
    scope: str = "user"  # what was locked: "user" (the username) or "address"

    def message(self) -> str:
        seconds = max(0, (self.until - timezone.now()).total_seconds())
        minutes = max(1, math.ceil(seconds / 60))
        when = self.until.astimezone(timezone.get_current_timezone()).strftime("%H:%M %Z")
        unit = "minute" if minutes == 1 else "minutes"
        return f"Too many failed sign-in attempts. You may try again in {minutes} {unit} (after {when})."


def max_failures() -> int:
    return int(getattr(settings, "DOMUS_LOGIN_MAX_FAILURES", 5))


def max_failures_per_ip() -> int:
    return int(getattr(settings, "DOMUS_LOGIN_MAX_FAILURES_PER_IP", 20))


def lockout_seconds() -> int:
    return int(getattr(settings, "DOMUS_LOGIN_LOCKOUT_SECONDS", 900))


def window_seconds() -> int:
    return int(getattr(settings, "DOMUS_LOGIN_WINDOW_SECONDS", 900))


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def _redis() -> redis.Redis:
    return _client(str(settings.REDIS_URL))


def _digest(value: str) -> str:
    # Hashed: usernames typed by strangers do not belong in key names.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _namespace() -> str:
    return f"{settings.DOMUS_REDIS_PREFIX}:login"


def _keys(kind: str, value: str) -> tuple[str, str]:
    base = f"{_namespace()}:{kind}:{_digest(value)}"
    return f"{base}:failures", f"{base}:locked"


def _username_keys(username: str) -> tuple[str, str]:
    return _keys("user", username.casefold())


def _ip_keys(ip: str | None) -> tuple[str, str] | None:
    return _keys("ip", ip) if ip else None


def _until(ttl_ms: int) -> datetime:
    return timezone.now() + timedelta(milliseconds=ttl_ms)


def login_refusal(*, username: str, ip: str | None) -> Lockout | None:
    """The lockout that refuses an attempt for `username` from `ip` now, if any (the later one
    when both are locked)."""
    lock_keys = [_username_keys(username)[1]]
    if (ip_keys := _ip_keys(ip)) is not None:
        lock_keys.append(ip_keys[1])
    try:
        pipe = _redis().pipeline(transaction=False)
        for key in lock_keys:
            pipe.pttl(key)
        ttls = [int(t) for t in pipe.execute()]
    except redis.RedisError as exc:
        raise ThrottleUnavailable("Sign-in is unavailable for a moment; try again shortly.") from exc
    # PTTL: -2 no key, -1 no expiry (never written that way); only a positive TTL locks.
    live = [t for t in ttls if t > 0]
    return Lockout(until=_until(max(live))) if live else None


def _count(pipe_client: redis.Redis, key: str) -> int:
    pipe = pipe_client.pipeline(transaction=True)
    # The window starts at the first failure; INCR keeps the TTL set by SET ... NX EX.
    pipe.set(key, 0, ex=window_seconds(), nx=True)
    pipe.incr(key)
    return int(pipe.execute()[1])


def _lock(client: redis.Redis, key: str) -> bool:
    """Lock `key` for the lockout time; True when this call locked it (it was not locked)."""
    return bool(client.set(key, 1, ex=lockout_seconds(), nx=True))


def login_failure_record(*, username: str, ip: str | None) -> list[Lockout]:
    """Count one failed attempt; the lockouts it started (the username's, the address's, both or
    none).

    The caller records each in the audit trail as "auth.lockout" (once: a lock is taken with
    SET NX, so concurrent failures cannot both start it)."""
    try:
        client = _redis()
        started: list[Lockout] = []
        until = _until(lockout_seconds() * 1000)
        failures_key, lock_key = _username_keys(username)
        if _count(client, failures_key) >= max_failures() and _lock(client, lock_key):
            client.delete(failures_key)  # a fresh window after the lockout ends
            started.append(Lockout(until=until, started_now=True, scope="user"))
        if (ip_keys := _ip_keys(ip)) is not None:
            ip_failures, ip_lock = ip_keys
            if _count(client, ip_failures) > max_failures_per_ip() and _lock(client, ip_lock):
                client.delete(ip_failures)
                started.append(Lockout(until=until, started_now=True, scope="address"))
        return started
    except redis.RedisError as exc:
        raise ThrottleUnavailable("Sign-in is unavailable for a moment; try again shortly.") from exc


def login_success_record(*, username: str) -> None:
    """A completed sign-in (password and, when enrolled, the code) clears the username's count."""
    try:
        _redis().delete(_username_keys(username)[0])
    except redis.RedisError as exc:
        raise ThrottleUnavailable("Sign-in is unavailable for a moment; try again shortly.") from exc
