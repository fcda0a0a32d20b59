"""Scratch PostgreSQL databases beside the one DATABASE_URL names (e2e stacks, benchmarks)."""

from __future__ import annotations

import os


def scratch_database(url: str, prefix: str) -> str:
    """Create (anew) `<prefix>_<pid>` on the server of `url`; returns its URL."""
    import psycopg

    name = f"{prefix}_{os.getpid()}"
    base = url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


def drop_database(url: str) -> None:
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
