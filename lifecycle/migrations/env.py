"""Alembic environment: uses the connection ``lifecycle.db.migrate`` hands over.

From the alembic command line (authoring revisions), pass the database with
``-x url=...``; the engine is then built by ``lifecycle.db.make_engine`` and, on
PostgreSQL, the upgrade waits for the same migration advisory lock as the gateway's
(``lifecycle.db.lock_for_migration``), so it never races a starting replica.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from lifecycle.db import Base, lock_for_migration, make_engine

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database URL: alembic -x url=sqlite:///path/to.db ...")
    return url


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    _run(shared)
else:
    engine = make_engine(_url())
    try:
        with engine.begin() as connection:
            lock_for_migration(connection)
            _run(connection)
    finally:
        engine.dispose()
