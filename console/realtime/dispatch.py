"""Consumers that skip Channels' database clean-up for the messages that touch no database.

Channels' AsyncConsumer.dispatch runs Django's close_old_connections() before every message,
through sync_to_async: a hop to asgiref's one thread for sync code, shared by every socket of
the process. For a console keystroke that doubled the echo time; for an event fanned out to a
hundred sockets it was a hundred hops in a row (bench/hostwatch_bench.py: web CPU under load
36% -> 19% of a core, channel layer to the first socket p50 20 -> 3 ms without it).

The handlers of the types named in `no_db_cleanup` reach the database only through
database_sync_to_async, which closes old connections itself, around each call.
"""

from __future__ import annotations

from typing import Any, ClassVar

from channels.consumer import get_handler_name


class SkipsDbCleanup:
    no_db_cleanup: ClassVar[frozenset[str]] = frozenset()

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] in self.no_db_cleanup:
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)  # type: ignore[misc]
