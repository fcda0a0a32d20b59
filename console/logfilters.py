from __future__ import annotations

import logging


class NotHealthzFilter(logging.Filter):
    """A 503 from /healthz is an answer, not an error worth a log line (the launcher polls it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        return getattr(request, "path", None) not in ("/healthz", "/livez")
