"""The storage plumbing: engine settings, migrations, transactions, error translation.

Tests taking ``db``/``db_url`` run on SQLite and on PostgreSQL."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from lifecycle import migrations
from lifecycle.db import Base, Database, make_engine, migrate
from lifecycle.domain import Signature
from lifecycle.errors import ConflictError, InvalidArgument, StorageUnavailable
from lifecycle.registry import Registry


def test_sqlite_engine_creates_the_directory_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "registry.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert path.is_file()
    finally:
        engine.dispose()


def test_migrate_is_idempotent_and_matches_the_mapping(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From an unrelated working directory: the scripts are found inside the package.
    monkeypatch.chdir(tmp_path)
    engine = make_engine(db_url)
    try:
        migrate(engine)
        migrate(engine)
        with engine.connect() as conn:
            head = ScriptDirectory(str(Path(migrations.__file__).parent)).get_current_head()
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
                (head,)
            ]
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_replicas_starting_together_migrate_one_after_the_other(db_url: str) -> None:
    # Four processes' engines on one empty database, released at once: without the
    # serialization (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock) they would
    # race to create the same tables and all but one would fail.
    engines = [make_engine(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        barrier.wait(timeout=30)
        migrate(engine)

    try:
        with ThreadPoolExecutor(max_workers=len(engines)) as pool:
            for future in [pool.submit(start, e) for e in engines]:
                future.result(timeout=120)
        with engines[0].connect() as conn:
            head = ScriptDirectory(str(Path(migrations.__file__).parent)).get_current_head()
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
                (head,)
            ]
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        for engine in engines:
            engine.dispose()


def test_postgresql_urls_get_psycopg_and_an_unreachable_server_is_storage_unavailable(
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = make_engine(f"postgresql://nobody:secret@127.0.0.1:{port}/none")
    try:
        assert engine.dialect.driver == "psycopg"
        with pytest.raises(StorageUnavailable, match="database unavailable"):
            migrate(engine)
        with pytest.raises(StorageUnavailable), Database(engine).write() as session:
            session.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def test_migrated_data_survives_a_second_migrate(
    db_url: str, registry: Registry, signature: Signature
) -> None:
    registry.create_model("kept", signature, actor="test")
    engine = make_engine(db_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    assert registry.get_model("kept").name == "kept"


def test_timestamps_come_back_timezone_aware_utc(db: Database, signature: Signature) -> None:
    local = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    registry = Registry(db, clock=lambda: local)
    created = registry.create_model("m", signature, actor="test")
    stored = registry.get_model("m").created_at
    assert stored == local == created.created_at
    assert stored.tzinfo is UTC
    assert stored.hour == 10


def test_integrity_errors_become_conflicts_and_roll_back(db: Database) -> None:
    now = datetime.now(UTC)
    insert = text(
        "INSERT INTO models (name, task, signature, created_at) VALUES (:n, '', '{}', :t)"
    )
    with db.write() as session:
        session.execute(insert, {"n": "dup", "t": now.replace(tzinfo=None)})
    with pytest.raises(ConflictError), db.write() as session:
        session.execute(insert, {"n": "other", "t": now.replace(tzinfo=None)})
        session.execute(insert, {"n": "dup", "t": now.replace(tzinfo=None)})
    with db.read() as session:
        names = session.execute(text("SELECT name FROM models ORDER BY name")).scalars().all()
    assert names == ["dup"]


def test_values_the_columns_cannot_hold_are_invalid_arguments(
    db: Database, signature: Signature
) -> None:
    # The registry checks what PostgreSQL would refuse (SQLite stores any length)...
    with pytest.raises(InvalidArgument, match="task"):
        Registry(db).create_model("m", signature, task="t" * 65, actor="test")
    # ...and whatever a column refuses all the same is a client error, not a crash.
    if db.dialect == "postgresql":
        with pytest.raises(InvalidArgument, match="refused a value"), db.write() as session:
            session.execute(text("INSERT INTO models (name, task, signature, created_at) "
                                 "VALUES ('m', :task, '{}', now())"), {"task": "t" * 65})


def test_write_scopes_cannot_nest(db: Database) -> None:
    with db.write(), pytest.raises(RuntimeError, match="nest"), db.write():
        pass
    # The outer scope released the write slot: a new one opens.
    with db.write() as session:
        assert session.execute(text("SELECT 1")).scalar() == 1


def test_a_writer_that_cannot_get_the_write_slot_in_time_is_storage_unavailable(
    db: Database,
) -> None:
    impatient = Database(db.engine, lock_timeout_s=0.05)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with impatient.write():
            holding.set()
            release.wait(timeout=10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(timeout=10)
        with pytest.raises(StorageUnavailable, match="busy"), impatient.write():
            pass
    finally:
        release.set()
        holder.join(timeout=10)
    with impatient.write() as session:
        assert session.execute(text("SELECT 1")).scalar() == 1


def test_unusable_parent_directory_is_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    with pytest.raises(StorageUnavailable, match="directory"):
        make_engine(f"sqlite:///{blocker / 'registry.db'}")


def test_database_path_that_cannot_be_opened_is_storage_unavailable(tmp_path: Path) -> None:
    # A directory where the database file should be: SQLite cannot open it.
    (tmp_path / "registry.db").mkdir()
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        with pytest.raises(StorageUnavailable):
            migrate(engine)
        db = Database(engine)
        with pytest.raises(StorageUnavailable), db.read() as session:
            session.execute(text("SELECT 1"))
        with pytest.raises(StorageUnavailable), db.write() as session:
            session.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def test_registry_reports_storage_unavailable_when_its_directory_disappears(
    tmp_path: Path, signature: Signature
) -> None:
    data = tmp_path / "data"
    db = Database(make_engine(f"sqlite:///{data / 'registry.db'}"))
    migrate(db.engine)
    registry = Registry(db)
    registry.create_model("m", signature, actor="test")
    db.close()
    data.rename(tmp_path / "moved")
    data.write_text("the data directory is now a file")
    try:
        with pytest.raises(StorageUnavailable):
            registry.get_model("m")
        with pytest.raises(StorageUnavailable):
            registry.create_model("n", signature, actor="test")
    finally:
        db.close()
