"""The databases of the storage contract tests: a test taking ``database_url`` runs once
on SQLite and once on PostgreSQL, each time on a database of its own.

PostgreSQL comes from ``GATEWAY_TEST_POSTGRES_URL`` (a superuser's URL: each test gets a
``CREATE DATABASE`` of its own, dropped after it). ``scripts/pg-test.sh -- COMMAND``
starts a throwaway server and sets it, with ``GATEWAY_TEST_POSTGRES_CTL`` to stop and
restart that server; ``make test`` runs the suite under it. Without the URL the
postgresql cases fail, never skip, unless the run is SQLite-only on purpose:
``GATEWAY_TEST_DATABASES=sqlite`` (``make test-quick``) or ``-m "not postgres"``.

A test that only makes sense on one backend narrows the fixture with
``@only("sqlite")`` or ``@only("postgresql")``. Cases of a backend the run did not select
are deselected at collection (``deselect_unselected_backends``), never skipped.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.pool import NullPool

__all__ = [
    "BACKENDS",
    "ENV_CTL",
    "ENV_DATABASES",
    "ENV_URL",
    "PostgresServer",
    "backend_of",
    "database_url",
    "deselect_unselected_backends",
    "only",
    "postgres_server",
    "sqlite_url",
]

ENV_URL = "GATEWAY_TEST_POSTGRES_URL"
ENV_CTL = "GATEWAY_TEST_POSTGRES_CTL"
ENV_DATABASES = "GATEWAY_TEST_DATABASES"
KNOWN = ("sqlite", "postgresql")


def _selected() -> tuple[str, ...]:
    raw = os.environ.get(ENV_DATABASES, ",".join(KNOWN))
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in KNOWN]
    if not names or unknown:
        raise pytest.UsageError(
            f"{ENV_DATABASES}={raw!r}: expected a comma-separated subset of {', '.join(KNOWN)}"
        )
    return names


BACKENDS = _selected()
"""The backends this run tests (``GATEWAY_TEST_DATABASES``, default both)."""


def _param(name: str) -> Any:
    marks = (pytest.mark.postgres,) if name == "postgresql" else ()
    return pytest.param(name, marks=marks, id=name)


def only(*names: str) -> pytest.MarkDecorator:
    """Run the decorated test on these backends only (of those the run selected)."""
    unknown = [n for n in names if n not in KNOWN]
    if unknown or not names:
        raise ValueError(f"unknown backends {unknown}; expected some of {KNOWN}")
    # Parametrizing the fixture's name on the test overrides the fixture's own params.
    return pytest.mark.parametrize("database_url", [_param(n) for n in names], indirect=True)


def deselect_unselected_backends(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the cases of backends outside ``BACKENDS`` (a SQLite-only run), reported as
    deselected; for ``pytest_collection_modifyitems``."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("database_url") if callspec is not None else None
        (drop if backend is not None and backend not in BACKENDS else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def sqlite_url(tmp_path: Path, name: str = "gateway.db") -> str:
    return f"sqlite:///{tmp_path / 'data' / name}"


def backend_of(url: str) -> str:
    return make_url(url).get_backend_name()


class PostgresServer:
    """The test server, seen through its admin URL: creates and drops test databases,
    stops and starts the server (through ``GATEWAY_TEST_POSTGRES_CTL``)."""

    def __init__(self, url: str, ctl: str | None) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise pytest.UsageError(f"{ENV_URL} must be a postgresql URL, got {parsed!r}")
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = parsed
        self.ctl = ctl
        # No pool: nothing survives a test that stops the server.
        self.admin: Engine = create_engine(parsed, isolation_level="AUTOCOMMIT",
                                           poolclass=NullPool)

    def create_database(self) -> tuple[str, str]:
        """A new empty database: (its URL, its name)."""
        name = f"t_{uuid.uuid4().hex[:20]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self.url.set(database=name).render_as_string(hide_password=False), name

    def drop_database(self, name: str) -> None:
        # FORCE: connections a test left open (a pool, a stopped gateway) must not block it.
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _control(self, action: str) -> None:
        if not self.ctl:
            pytest.fail(f"{ENV_CTL} is not set: run the tests through scripts/pg-test.sh "
                        "to let them stop and start the PostgreSQL server")
        done = subprocess.run([self.ctl, action], capture_output=True, text=True, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise AssertionError(f"{self.ctl} {action} failed: {done.stdout}{done.stderr}")

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut)."""
        self._control("stop")

    def start(self) -> None:
        """Start it again; returns once it accepts connections."""
        self._control("start")

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The server is down for the block; started again however the block ends."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    url = os.environ.get(ENV_URL)
    if not url:
        pytest.fail(
            f"{ENV_URL} is not set. The storage contract tests run on SQLite and PostgreSQL: "
            f"run them through scripts/pg-test.sh -- python -m pytest ... (make test does), "
            f"or run SQLite only with {ENV_DATABASES}=sqlite or -m 'not postgres'.",
            pytrace=False,
        )
    server = PostgresServer(url, os.environ.get(ENV_CTL))
    yield server
    server.close()


@pytest.fixture(params=[_param(n) for n in KNOWN])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of the test's own, per backend (not migrated)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url, name = server.create_database()
    yield url
    server.drop_database(name)
