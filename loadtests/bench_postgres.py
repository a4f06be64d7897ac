"""PostgreSQL for the benchmarks: a database of the sitting's own on a given server, and
the server's CPU use read from /proc (Linux, same machine)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from loadtests.bench_probe import TICK
from loadtests.errors import ConfigError, RunError


@dataclass(frozen=True)
class Database:
    """The sitting's database; ``admin_url`` (the URL given) drops it, None: not ours."""

    url: str
    name: str
    admin_url: str | None
    version: str


def _pg_url(url: str) -> Any:
    """``url`` parsed; a bare ``postgresql://`` gets psycopg 3, as the gateway does."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"--database-url: expected a postgresql URL, got {parsed!r}")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def open_database(server_url: str, prefix: str = "bench_replicas") -> Database:
    """A fresh database (named ``prefix``, then the time) on the server of ``server_url``,
    else that URL's database when the role may not create one and it is empty; raises
    RunError otherwise."""
    parsed = _pg_url(server_url)
    engine = create_engine(parsed, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"{prefix}_{datetime.now():%Y%m%d_%H%M%S}_{uuid.uuid4().hex[:6]}"
    try:
        with engine.connect() as conn:
            version = str(conn.exec_driver_sql("SHOW server_version").scalar())
            try:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            except SQLAlchemyError:
                tables = inspect(conn).get_table_names()
                if tables:
                    raise RunError(
                        f"cannot create a database on {parsed.host}:{parsed.port} and "
                        f"{parsed.database!r} is not empty ({len(tables)} tables): give a "
                        "role with CREATEDB or an empty database") from None
                return Database(parsed.render_as_string(hide_password=False),
                                str(parsed.database), None, version)
    except SQLAlchemyError as exc:
        raise RunError(f"PostgreSQL at {parsed.host}:{parsed.port}: {exc}") from exc
    finally:
        engine.dispose()
    return Database(parsed.set(database=name).render_as_string(hide_password=False), name,
                    parsed.render_as_string(hide_password=False), version)


def drop_database(database: Database) -> None:
    """Drop the sitting's database if it is ours; raises RunError when that fails."""
    if database.admin_url is None:
        return
    engine = create_engine(database.admin_url, isolation_level="AUTOCOMMIT",
                           poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
    except SQLAlchemyError as exc:
        raise RunError(f"cannot drop database {database.name!r}: {exc}") from exc
    finally:
        engine.dispose()


def postgres_cpu_probe(url: str) -> Callable[[], float] | None:
    """CPU seconds of the server's postmaster, its live children and its reaped ones
    (``cutime``), read from /proc; None when its data directory cannot be read (a remote
    server, a role without ``pg_read_all_settings``, another user's files). On a shared
    server this includes the other databases' work."""
    engine = create_engine(_pg_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            data_dir = Path(str(conn.exec_driver_sql("SHOW data_directory").scalar()))
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (SQLAlchemyError, OSError, ValueError, IndexError):
        return None
    finally:
        engine.dispose()

    def cpu() -> float:
        ticks = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(entry) == postmaster:
                ticks += sum(int(f) for f in fields[11:15])
            elif int(fields[1]) == postmaster:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / TICK

    return cpu
