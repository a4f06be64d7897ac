"""Hold a database's write lock from another connection, so every write of the gateway
fails once its lock wait runs out while reads go on: the outage the request log's journal
exists for. Used by the logging scenario and by the tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool


@contextmanager
def write_locked(url: str, tables: Sequence[str] | None = None) -> Iterator[None]:
    """For the block: SQLite's ``BEGIN EXCLUSIVE`` (the whole file), or PostgreSQL's
    ``LOCK TABLE … IN EXCLUSIVE MODE`` on ``tables`` (every table of the schema if None)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        locker = sqlite3.connect(parsed.database or "", isolation_level=None, timeout=30)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            yield
            locker.execute("COMMIT")
        finally:
            locker.close()
        return
    engine = create_engine(parsed, poolclass=NullPool)
    try:
        with engine.connect() as conn, conn.begin():
            if tables is None:
                tables = conn.exec_driver_sql(
                    "SELECT quote_ident(tablename) FROM pg_tables "
                    "WHERE schemaname = current_schema() ORDER BY tablename").scalars().all()
            conn.exec_driver_sql(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")
            yield
    finally:
        engine.dispose()
