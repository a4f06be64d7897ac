"""Bulk batches of the request store: big enough for PostgreSQL's ``COPY`` path (the
batch ``COPY``ed into a session temp table, then one ``INSERT … SELECT … ON CONFLICT DO
NOTHING``), on SQLite and PostgreSQL alike: stored once, as given, in the batch's order;
and on PostgreSQL the errors of the raw ``COPY`` keep their meaning (a refused value,
a lost connection), and a role without temporary tables still gets its rows in."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.pool import NullPool

from gateway.request_log import RequestLog, RequestLogConfig
from lifecycle.db import Database, make_engine, migrate
from lifecycle.errors import InvalidArgument, StorageUnavailable
from lifecycle.request_records import RequestEntry, Tensor, encode_tensors
from lifecycle.request_store import PG_COPY_MIN_ROWS, RequestStore
from loadtests.database_lock import write_locked
from tests.request_log.conftest import record, sample
from tests.support.databases import PostgresServer, only

_ids = itertools.count(1)
BATCH = PG_COPY_MIN_ROWS * 2 + 3
# Characters COPY's text format must escape, and JSON must too.
# Bytes COPY's text format must escape.
RAW = encode_tensors([Tensor("y", "UINT8", (6,), b"\x00\t\n\\\r\xff")])
AWKWARD = "tab\there, new\nline, back\\slash, quote' \"dq\", é, ∑, 🙂"


def entry(i: int, ts: int = 1_000, **fields: Any) -> RequestEntry:
    blob = encode_tensors([Tensor("x", "INT64", (1,), i.to_bytes(8, "little"))])
    values: dict[str, Any] = {
        "record_id": f"{next(_ids):032x}", "request_id": f"r{i}", "model": "m",
        "version": 1 + i % 3, "timestamp_us": ts, "latency_us": 10 + i, "status": "OK",
        "inputs": blob, "outputs": RAW, "metadata": {"i": str(i)},
    }
    values.update(fields)
    return RequestEntry(**values)


def mixed_batch(n: int) -> list[RequestEntry]:
    """Every kind of row the writer produces, all with one timestamp (so the stored order
    of equal timestamps, the row ids, shows the batch's order)."""
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(entry(i))
        elif kind == 1:
            out.append(entry(i, inputs=None, outputs=None, payload_dropped=True, metadata={}))
        elif kind == 2:
            out.append(entry(i, shadow=True, arm="b", experiment_id="exp-1",
                             routing_key_hash="ab12", metadata={"note": AWKWARD}))
        else:
            out.append(entry(i, request_id=AWKWARD, status="INVALID_ARGUMENT", inputs=None,
                             outputs=None))
    return out


def stored(store: RequestStore) -> list[tuple[Any, ...]]:
    return [(r.record_id, r.request_id, r.model, r.version, r.timestamp_us, r.latency_us,
             r.status, encode_tensors(r.inputs) if r.payload_captured else None,
             encode_tensors(r.outputs) if r.payload_captured else None, r.metadata,
             r.payload_dropped, r.arm, r.experiment_id, r.routing_key_hash, r.shadow)
            for r in store.query_requests("m")]


def as_given(entries: list[RequestEntry]) -> list[tuple[Any, ...]]:
    return [(e.record_id, e.request_id, e.model, e.version, e.timestamp_us, e.latency_us,
             e.status, e.inputs, e.outputs, e.metadata, e.payload_dropped, e.arm,
             e.experiment_id, e.routing_key_hash, e.shadow) for e in entries]


@pytest.fixture
def statements(db: Database) -> list[tuple[str, bool]]:
    """(statement, executemany) of every statement SQLAlchemy sends on ``db``."""
    seen: list[tuple[str, bool]] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any,
              executemany: bool) -> None:
        seen.append((statement, executemany))

    return seen


def test_a_bulk_batch_is_stored_once_as_given_in_its_order(
    store: RequestStore, statements: list[tuple[str, bool]], database_url: str
) -> None:
    batch = mixed_batch(BATCH)
    store.insert(batch)
    store.insert(batch)  # a journal replay
    assert stored(store) == as_given(batch)

    # Half replayed, half new: only the new half is added, after the first batch.
    more = mixed_batch(BATCH)
    store.insert(batch[BATCH // 2:] + more)
    assert stored(store) == as_given(batch + more)

    if make_url(database_url).get_backend_name() == "postgresql":
        inserts = [(s, many) for s, many in statements if s.startswith("INSERT INTO request_log")]
        # One INSERT … SELECT from the COPY's staging table per batch, never a row at a time.
        assert len(inserts) == 3
        assert all("FROM pg_temp.request_log_stage" in s and not many for s, many in inserts)


def test_a_small_batch_takes_the_row_insert_and_ends_up_the_same(store: RequestStore) -> None:
    batch = mixed_batch(PG_COPY_MIN_ROWS - 1)
    store.insert(batch)
    store.insert(batch[:3])
    assert stored(store) == as_given(batch)


def test_the_writer_logs_a_burst_in_bulk_batches(
    store: RequestStore, journal_dir: Path
) -> None:
    registry = CollectorRegistry()
    request_log = RequestLog(RequestLogConfig(journal_dir=journal_dir, batch_max=500),
                             store, registry)
    request_log.start()
    try:
        records = [record(request_id=f"r{i}") for i in range(1_200)]
        assert all(request_log.log(r) for r in records)
        assert request_log.flush(30.0)
    finally:
        assert request_log.stop(10.0)
    assert store.count("m") == 1_200
    assert sample(registry, "gateway_request_log_logged_total", kind="request") \
        + sample(registry, "gateway_request_log_replayed_total", kind="request") == 1_200
    assert [r.record_id for r in store.query_requests("m")] == [r.record_id for r in records]


@only("postgresql")
def test_a_value_the_copy_refuses_fails_the_batch_and_nothing_is_written(
    store: RequestStore
) -> None:
    batch = mixed_batch(BATCH)
    batch[7] = entry(7, record_id="x" * 40)  # record_id is VARCHAR(32)
    with pytest.raises(InvalidArgument, match="too long"):
        store.insert(batch)
    assert store.count("m") == 0
    # The session is usable again: the next batch goes in.
    del batch[7]
    store.insert(batch)
    assert stored(store) == as_given(batch)


@only("postgresql")
def test_a_locked_table_makes_a_bulk_batch_storage_unavailable(
    store: RequestStore, database_url: str
) -> None:
    with write_locked(database_url), pytest.raises(StorageUnavailable):
        store.insert(mixed_batch(BATCH))
    assert store.count("m") == 0


@only("postgresql")
def test_a_connection_lost_during_the_copy_is_storage_unavailable_and_the_retry_lands(
    store: RequestStore, db: Database, database_url: str
) -> None:
    admin = create_engine(make_url(database_url), poolclass=NullPool)
    killed: list[int] = []

    # The server ends the session between the staging table's creation and the COPY.
    @event.listens_for(db.engine, "after_cursor_execute")
    def _kill(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("CREATE TEMPORARY TABLE") and not killed:
            pid = conn.connection.dbapi_connection.info.backend_pid
            with admin.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killed.append(pid)

    batch = mixed_batch(BATCH)
    try:
        with pytest.raises(StorageUnavailable):
            store.insert(batch)
        assert killed
        store.insert(batch)
    finally:
        admin.dispose()
    assert stored(store) == as_given(batch)


@contextmanager
def role_without_temp(database_url: str, server: PostgresServer) -> Iterator[str]:
    """The URL of a new role that may read and write the (migrated) tables of
    ``database_url`` but not create temporary tables there; dropped afterwards."""
    engine = make_engine(database_url)
    migrate(engine)
    name = make_url(database_url).database
    role = f"t_notemp_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.exec_driver_sql(f'REVOKE TEMPORARY ON DATABASE "{name}" FROM PUBLIC')
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
                             f"public TO {role}")
        conn.exec_driver_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    try:
        yield make_url(database_url).set(username=role, password=password).render_as_string(
            hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'GRANT TEMPORARY ON DATABASE "{name}" TO PUBLIC')
            # Its grants go first; the database itself is dropped by its fixture.
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
        engine.dispose()
        with server.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")


@only("postgresql")
def test_a_role_without_temporary_tables_falls_back_to_row_inserts(
    database_url: str, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    with role_without_temp(database_url, postgres_server) as url:
        db = Database(make_engine(url))
        try:
            store = RequestStore(db)
            first, second = mixed_batch(BATCH), mixed_batch(BATCH)
            with caplog.at_level(logging.WARNING, logger="lifecycle.request_store"):
                store.insert(first)
                store.insert(second)
                store.insert(first)
            assert stored(store) == as_given(first + second)
        finally:
            db.close()
    warned = [r for r in caplog.records
              if getattr(r, "event", None) == "request_log_copy_disabled"]
    assert len(warned) == 1
    assert "permission denied" in warned[0].reason  # type: ignore[attr-defined]
