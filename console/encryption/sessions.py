"""SESSION_ENGINE: Django's database sessions, with each row keyed by a hash of the cookie.

The cookie carries the session key; the `django_session` row is keyed by HMAC-SHA256(SECRET_KEY,
key) instead, so someone who reads the database alone finds no key to put in a cookie (the
session data was already signed, never usable without SECRET_KEY). Everything else is Django's
`db` backend: expiry, `clear_expired`, cycling the key at sign-in. `session.session_key` is still
the cookie's value, as the sign-out events and sockets compare it.

A new SECRET_KEY signs everyone out, as it does with Django's own backends.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.sessions.backends import db
from django.contrib.sessions.base_session import AbstractBaseSession
from django.utils import timezone
from django.utils.crypto import salted_hmac

HASHED_KEY_LENGTH = 40  # the column's width; a cookie's key is 32 characters, so never ambiguous
_SALT = "domus.session-key"


def stored_key(session_key: str) -> str:
    """The primary key of the row of the session whose cookie holds `session_key`."""
    digest = salted_hmac(_SALT, session_key, secret=settings.SECRET_KEY, algorithm="sha256")
    return digest.hexdigest()[:HASHED_KEY_LENGTH]


class SessionStore(db.SessionStore):
    def _get_session_from_db(self) -> AbstractBaseSession | None:
        if self.session_key is not None:
            found = self.model.objects.filter(
                session_key=stored_key(self.session_key), expire_date__gt=timezone.now()
            ).first()
            if found is not None:
                return found
        self._session_key = None
        return None

    async def _aget_session_from_db(self) -> AbstractBaseSession | None:
        if self.session_key is not None:
            found = await self.model.objects.filter(
                session_key=stored_key(self.session_key), expire_date__gt=timezone.now()
            ).afirst()
            if found is not None:
                return found
        self._session_key = None
        return None

    def exists(self, session_key: str) -> bool:
        return bool(super().exists(stored_key(session_key)))

    async def aexists(self, session_key: str) -> bool:
        return bool(await super().aexists(stored_key(session_key)))

    def create_model_instance(self, data: dict[str, Any]) -> AbstractBaseSession:
        row = super().create_model_instance(data)
        row.session_key = stored_key(row.session_key)
        return row

    async def acreate_model_instance(self, data: dict[str, Any]) -> AbstractBaseSession:
        row = await super().acreate_model_instance(data)
        row.session_key = stored_key(row.session_key)
        return row

    def delete(self, session_key: str | None = None) -> None:
        session_key = session_key or self.session_key
        if session_key is not None:
            super().delete(stored_key(session_key))

    async def adelete(self, session_key: str | None = None) -> None:
        session_key = session_key or self.session_key
        if session_key is not None:
            await super().adelete(stored_key(session_key))
