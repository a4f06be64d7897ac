"""Storage of the request log: logged inferences, ground-truth feedback, and their join.

A repository over ``Database`` (SQLAlchemy Core on the ``request_log`` and ``feedback``
tables); rows never leave it: reads return ``lifecycle.request_records`` dataclasses.
Thread-safe. Times are integer epoch microseconds.

Writes are idempotent: ``insert`` ignores a ``record_id``/``feedback_id`` already stored
(``INSERT … ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL), so replaying a journal
after a crash never duplicates a row.

Bulk writes: on SQLite a batch of requests goes in multi-row ``INSERT``s of up to 128 rows.
On PostgreSQL a batch of at least ``PG_COPY_MIN_ROWS`` requests is ``COPY``ed into a
temporary table of the session (``ON COMMIT DELETE ROWS``: empty outside the transaction)
and moved by one ``INSERT … SELECT … ON CONFLICT DO NOTHING``, in the batch's order;
smaller batches go as one pipelined ``executemany`` (one round trip, one execution per
row on the server). Measured for 500-row batches (204 bytes of tensors a row): about
5 µs of the writer's CPU per row with ``COPY`` against 18–29 µs with ``executemany``,
with the same CPU on the server; below about 50 rows the ``COPY``'s fixed statements
cost more than they save. A role that may not create temporary tables gets the
``executemany`` path (logged once).

The feedback join, decided at query time so feedback may arrive before or after its
request is written:

- a request id is joined per model, and only for a non-empty request id;
- feedback labels the **latest primary record** with that request id: the non-shadow
  record with the greatest ``(ts, record_id)``. Clients may reuse request ids: each
  inference keeps its own record, and only the latest one carries the label. Shadow
  records never carry one;
- several submissions for one request id: the **latest received wins** (greatest
  ``(received_at, feedback_id)``); every submission is kept and ``JoinedFeedback.count``
  says how many there were;
- feedback whose request id has no primary record once the join window has passed is
  *unmatched*: ``unmatched_feedback`` reports it and ``purge_unmatched_feedback`` deletes it.

Purges delete in bounded batches, each its own short transaction, so the log's writer is
never locked out for long. Neither needs the registry's serialized writes, so on PostgreSQL
both run beside other writers (``Database.write(exclusive=False)``): ``ON CONFLICT DO
NOTHING`` keeps concurrent inserts of one id to one row. Raises ``StorageUnavailable`` when
the database is unreachable.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, cast

from sqlalchemy import (
    Select,
    Table,
    and_,
    delete,
    exc,
    exists,
    false,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Row

from lifecycle.db import Database, feedback_table, request_log_table
from lifecycle.errors import ConflictError, InvalidArgument, NotFoundError
from lifecycle.request_records import (
    FeedbackEntry,
    JoinedFeedback,
    Label,
    LoggedRequest,
    RequestEntry,
    Tensor,
    decode_tensors,
    encode_tensors,
)

__all__ = ["PG_COPY_MIN_ROWS", "PurgeResult", "RequestStore"]

log = logging.getLogger("lifecycle.request_store")

PG_COPY_MIN_ROWS = 64
"""PostgreSQL: a batch of at least this many requests is written through ``COPY``."""

_R = request_log_table
_F = feedback_table
_LATER = _R.alias("later")
_NEWER = _F.alias("newer")
_DUP = _F.alias("dup")

# No later primary record with this model and request id.
_LATEST_PRIMARY = ~exists().where(
    _LATER.c.model == _R.c.model,
    _LATER.c.request_id == _R.c.request_id,
    _LATER.c.shadow == false(),
    or_(
        _LATER.c.ts > _R.c.ts,
        and_(_LATER.c.ts == _R.c.ts, _LATER.c.record_id > _R.c.record_id),
    ),
)
# No submission received later for this model and request id.
_LATEST_FEEDBACK = ~exists().where(
    _NEWER.c.model == _F.c.model,
    _NEWER.c.request_id == _F.c.request_id,
    or_(
        _NEWER.c.received_at > _F.c.received_at,
        and_(_NEWER.c.received_at == _F.c.received_at, _NEWER.c.feedback_id > _F.c.feedback_id),
    ),
)
_JOINED = _R.outerjoin(
    _F,
    and_(
        _F.c.model == _R.c.model,
        _F.c.request_id == _R.c.request_id,
        _R.c.shadow == false(),
        _R.c.request_id != "",
        _LATEST_FEEDBACK,
        _LATEST_PRIMARY,
    ),
)
_COUNT = (
    select(func.count())
    .where(_DUP.c.model == _F.c.model, _DUP.c.request_id == _F.c.request_id)
    .scalar_subquery()
)
_COLUMNS = (
    *_R.c,
    _F.c.feedback_id,
    _F.c.label_kind,
    _F.c.label_int,
    _F.c.label_float,
    _F.c.label_tensor,
    _F.c.ts.label("feedback_ts"),
    _F.c.received_at,
    _COUNT.label("feedback_count"),
)
# A primary record exists for this feedback's model and request id.
_MATCHED = exists().where(
    _R.c.model == _F.c.model, _R.c.request_id == _F.c.request_id, _R.c.shadow == false()
)


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class PurgeResult:
    requests: int
    feedback: int


class RequestStore:
    """Repository of the request log; see the module docstring.

    ``join_window_s`` is how long feedback may wait for its request before it counts as
    unmatched; ``clock_us`` gives now in epoch microseconds; ``page_size`` is how many
    rows one read transaction of a streaming query fetches.
    """

    def __init__(
        self,
        db: Database,
        *,
        join_window_s: float = 7 * 86400.0,
        clock_us: Callable[[], int] = _now_us,
        page_size: int = 500,
    ) -> None:
        if page_size < 1:
            raise InvalidArgument(f"page_size must be at least 1, got {page_size}")
        self._db = db
        self._join_window_us = int(join_window_s * 1e6)
        self._clock_us = clock_us
        self._page_size = page_size
        self._insert_requests = _insert_ignore(db.dialect, _R, "record_id")
        self._insert_feedback = _insert_ignore(db.dialect, _F, "feedback_id")
        self._sqlite_insert_requests: str | None = None
        if db.dialect == "sqlite":
            compiled = self._insert_requests.compile(
                dialect=db.engine.dialect, column_keys=list(_REQUEST_COLUMNS)
            )
            if tuple(compiled.positiontup or ()) != _REQUEST_COLUMNS:
                raise RuntimeError("unexpected parameter order in the request_log insert")
            if _SQLITE_ROW not in compiled.string:
                raise RuntimeError("unexpected VALUES clause in the request_log insert")
            self._sqlite_insert_requests = compiled.string
        self._sqlite_statements: dict[int, str] = {}
        # False once the role turned out unable to create the COPY's staging table.
        self._pg_copy = db.dialect == "postgresql"

    # ------------------------------------------------------------------ writes

    def insert(
        self, requests: Sequence[RequestEntry] = (), feedback: Sequence[FeedbackEntry] = ()
    ) -> None:
        """Store a batch in one transaction; entries whose id is already stored are skipped.

        Raises ``StorageUnavailable`` (retry later: nothing was written) or, for a batch the
        database refuses (e.g. a value too long for its column), the database's error.
        """
        if self._pg_copy and len(requests) >= PG_COPY_MIN_ROWS:
            try:
                self._write(requests, feedback, copy=True)
                return
            except _StagingRefused as err:
                self._pg_copy = False
                log.warning("request store: cannot create the COPY staging table; inserting "
                            "with executemany from now on", extra={
                                "event": "request_log_copy_disabled", "reason": str(err)})
        self._write(requests, feedback, copy=False)

    def _write(
        self, requests: Sequence[RequestEntry], feedback: Sequence[FeedbackEntry], *, copy: bool
    ) -> None:
        feedback_rows = [_feedback_row(e) for e in feedback]
        sqlite_sql = self._sqlite_insert_requests
        with self._db.write(exclusive=False) as session:
            conn = session.connection()
            if copy:
                _pg_copy_requests(conn, requests)
            elif requests and sqlite_sql is not None:
                # The hot write path. SQLAlchemy's per-row parameter processing would
                # triple the CPU per row, so rows go to the driver as ready tuples; and
                # many rows per statement, because sqlite3 releases and retakes the GIL
                # around every statement step: executemany's one step per row made the
                # serving thread hand the GIL over once per logged row.
                rows = [_sqlite_request_params(e) for e in requests]
                for start in range(0, len(rows), _SQLITE_ROWS_PER_STATEMENT):
                    chunk = rows[start:start + _SQLITE_ROWS_PER_STATEMENT]
                    conn.exec_driver_sql(self._sqlite_statement(sqlite_sql, len(chunk)),
                                         tuple(chain.from_iterable(chunk)))
            elif requests:
                request_rows = [_request_row(e) for e in requests]
                self._execute_ignoring(conn, self._insert_requests, _R, "record_id", request_rows)
            if feedback_rows:
                self._execute_ignoring(
                    conn, self._insert_feedback, _F, "feedback_id", feedback_rows
                )

    def _sqlite_statement(self, single_row: str, rows: int) -> str:
        """The insert of ``single_row`` with ``rows`` row groups in its VALUES clause."""
        found = self._sqlite_statements.get(rows)
        if found is None:
            found = single_row.replace(_SQLITE_ROW, ", ".join([_SQLITE_ROW] * rows), 1)
            self._sqlite_statements[rows] = found
        return found

    @staticmethod
    def _execute_ignoring(
        conn: Connection, stmt: Any, table: Table, key: str, rows: list[dict[str, Any]]
    ) -> None:
        if stmt is not None:
            conn.execute(stmt, rows)
            return
        # Dialects without ON CONFLICT: skip the keys already stored. The writer is the
        # only inserter and ids are unique per record, so no other transaction races us.
        column = table.c[key]
        wanted = [r[key] for r in rows]
        known = set(conn.execute(select(column).where(column.in_(wanted))).scalars())
        fresh = [r for r in rows if r[key] not in known]
        if fresh:
            conn.execute(insert(table), fresh)

    # ------------------------------------------------------------------ queries

    def query_requests(
        self,
        model: str,
        *,
        version: int | None = None,
        since: int | None = None,
        until: int | None = None,
        has_feedback: bool | None = None,
        include_shadow: bool = True,
        limit: int | None = None,
    ) -> Iterator[LoggedRequest]:
        """Stream a model's logged requests in time order, each with its joined label.

        ``since`` is inclusive and ``until`` exclusive (epoch µs). Rows are read in pages,
        each in its own short read transaction (no transaction stays open while the caller
        consumes the stream), so rows written meanwhile may or may not appear.
        """
        if limit is not None and limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {limit}")
        base = self._filtered(
            select(*_COLUMNS).select_from(_JOINED), model, version, since, until, has_feedback,
            include_shadow,
        ).order_by(_R.c.ts, _R.c.id)
        remaining = limit
        after: tuple[int, int] | None = None
        while remaining is None or remaining > 0:
            page = self._page_size if remaining is None else min(self._page_size, remaining)
            stmt = base
            if after is not None:
                ts, row_id = after
                stmt = stmt.where(or_(_R.c.ts > ts, and_(_R.c.ts == ts, _R.c.id > row_id)))
            with self._db.read() as session:
                rows = session.execute(stmt.limit(page)).all()
                found = [_logged_request(row) for row in rows]
            yield from found
            if len(rows) < page:
                return
            after = (rows[-1].ts, rows[-1].id)
            if remaining is not None:
                remaining -= len(rows)

    def count(
        self,
        model: str,
        *,
        version: int | None = None,
        since: int | None = None,
        until: int | None = None,
        has_feedback: bool | None = None,
        include_shadow: bool = True,
    ) -> int:
        """How many records ``query_requests`` with the same filters would stream."""
        stmt = self._filtered(
            select(func.count()).select_from(_JOINED), model, version, since, until,
            has_feedback, include_shadow,
        )
        with self._db.read() as session:
            return int(session.execute(stmt).scalar_one())

    def get_request(self, record_id: str) -> LoggedRequest:
        """One record by its id, with its joined label; ``NotFoundError`` if unknown."""
        stmt = select(*_COLUMNS).select_from(_JOINED).where(_R.c.record_id == record_id)
        with self._db.read() as session:
            row = session.execute(stmt).first()
            if row is None:
                raise NotFoundError(f"no logged request with record id '{record_id}'")
            return _logged_request(row)

    @staticmethod
    def _filtered(
        stmt: Select[Any],
        model: str,
        version: int | None,
        since: int | None,
        until: int | None,
        has_feedback: bool | None,
        include_shadow: bool,
    ) -> Select[Any]:
        stmt = stmt.where(_R.c.model == model)
        if version is not None:
            stmt = stmt.where(_R.c.version == version)
        if since is not None:
            stmt = stmt.where(_R.c.ts >= since)
        if until is not None:
            stmt = stmt.where(_R.c.ts < until)
        if has_feedback is True:
            stmt = stmt.where(_F.c.id.is_not(None))
        elif has_feedback is False:
            stmt = stmt.where(_F.c.id.is_(None))
        if not include_shadow:
            stmt = stmt.where(_R.c.shadow == false())
        return stmt

    # ------------------------------------------------------------------ feedback upkeep

    def unmatched_feedback(
        self, *, older_than: int | None = None, model: str | None = None, limit: int = 1000
    ) -> list[FeedbackEntry]:
        """Feedback received before ``older_than`` (default: now minus the join window)
        whose request id has no primary record, oldest first."""
        cutoff = self._cutoff(older_than)
        stmt = (
            select(_F).where(_F.c.received_at < cutoff, ~_MATCHED)
            .order_by(_F.c.received_at, _F.c.id).limit(limit)
        )
        if model is not None:
            stmt = stmt.where(_F.c.model == model)
        with self._db.read() as session:
            return [_feedback_entry(row) for row in session.execute(stmt)]

    def purge_unmatched_feedback(
        self, *, older_than: int | None = None, model: str | None = None, batch_size: int = 1000
    ) -> int:
        """Delete what ``unmatched_feedback`` reports, in batches; returns how many rows."""
        cutoff = self._cutoff(older_than)
        condition = [_F.c.received_at < cutoff, ~_MATCHED]
        if model is not None:
            condition.append(_F.c.model == model)
        return self._delete_in_batches(_F, and_(*condition), _F.c.received_at, batch_size)

    def _cutoff(self, older_than: int | None) -> int:
        return self._clock_us() - self._join_window_us if older_than is None else older_than

    # ------------------------------------------------------------------ retention

    def purge_before(
        self, before: int, *, model: str | None = None, batch_size: int = 1000
    ) -> PurgeResult:
        """Delete records with ``ts < before`` and feedback received before it.

        Runs batches of at most ``batch_size`` rows, each in its own transaction, until
        none is left; a concurrent writer waits at most one batch.
        """
        requests = _R.c.ts < before
        feedback = _F.c.received_at < before
        if model is not None:
            requests = and_(requests, _R.c.model == model)
            feedback = and_(feedback, _F.c.model == model)
        return PurgeResult(
            requests=self._delete_in_batches(_R, requests, _R.c.ts, batch_size),
            feedback=self._delete_in_batches(_F, feedback, _F.c.received_at, batch_size),
        )

    def _delete_in_batches(
        self, table: Table, condition: Any, order: Any, batch_size: int
    ) -> int:
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be at least 1, got {batch_size}")
        total = 0
        while True:
            with self._db.write(exclusive=False) as session:
                ids = list(session.execute(
                    select(table.c.id).where(condition).order_by(order).limit(batch_size)
                ).scalars())
                if ids:
                    session.execute(delete(table).where(table.c.id.in_(ids)))
            total += len(ids)
            if len(ids) < batch_size:
                return total


# ---------------------------------------------------------------------- row mapping


def _insert_ignore(dialect: str, table: Table, key: str) -> Any:
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=[key])
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=[key])
    return None


_REQUEST_COLUMNS = (
    "record_id", "request_id", "model", "version", "ts", "latency_us", "status", "inputs",
    "outputs", "metadata", "payload_dropped", "arm", "experiment_id", "routing_key_hash",
    "shadow",
)
_EMPTY_JSON = json.dumps({})
_SQLITE_ROW = "(" + ", ".join("?" * len(_REQUEST_COLUMNS)) + ")"
# 15 parameters a row: far below SQLite's limit of 32766 per statement.
_SQLITE_ROWS_PER_STATEMENT = 128


def _sqlite_request_params(e: RequestEntry) -> tuple[Any, ...]:
    """One row as the sqlite3 driver takes it, in ``_REQUEST_COLUMNS`` order: what
    SQLAlchemy's column types would produce (JSON text, booleans as 0/1)."""
    return (
        e.record_id, e.request_id, e.model, e.version, e.timestamp_us, e.latency_us, e.status,
        e.inputs, e.outputs, json.dumps(e.metadata) if e.metadata else _EMPTY_JSON,
        1 if e.payload_dropped else 0, e.arm, e.experiment_id, e.routing_key_hash,
        1 if e.shadow else 0,
    )


class _StagingRefused(Exception):
    """The role may not create the temporary staging table of the ``COPY`` path."""


_PG_STAGE = "request_log_stage"
_PG_INSUFFICIENT_PRIVILEGE = "42501"
_PG_COLUMNS = ", ".join(_REQUEST_COLUMNS)
# Created once per session (IF NOT EXISTS): the columns' types are request_log's, so a
# value the table would refuse is refused by the COPY already; "ord" keeps the batch's
# order for the row ids. No NOT NULL or unique constraint: the INSERT below checks them.
_PG_STAGE_DDL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_PG_STAGE} ON COMMIT DELETE ROWS AS "
    f"SELECT 0 AS ord, {_PG_COLUMNS} FROM {request_log_table.name} WITH NO DATA"
)
_PG_COPY = f"COPY pg_temp.{_PG_STAGE} (ord, {_PG_COLUMNS}) FROM STDIN"
_PG_MOVE = (
    f"INSERT INTO {request_log_table.name} ({_PG_COLUMNS}) "
    f"SELECT {_PG_COLUMNS} FROM pg_temp.{_PG_STAGE} ORDER BY ord "
    f"ON CONFLICT (record_id) DO NOTHING"
)


def _pg_copy_requests(conn: Connection, requests: Sequence[RequestEntry]) -> None:
    """``COPY`` the batch into the session's staging table, then move it into
    ``request_log`` skipping the ids already stored; in the caller's transaction."""
    try:
        conn.exec_driver_sql(_PG_STAGE_DDL)
    except exc.ProgrammingError as err:
        if getattr(err.orig, "sqlstate", None) != _PG_INSUFFICIENT_PRIVILEGE:
            raise
        # No TEMPORARY privilege on the database.
        raise _StagingRefused(str(err.orig)) from err
    dbapi_conn = cast(Any, conn.connection.dbapi_connection)
    dbapi = conn.dialect.loaded_dbapi
    try:
        with dbapi_conn.cursor() as cursor, cursor.copy(_PG_COPY) as copy:
            write = copy.write_row
            for ord_, e in enumerate(requests):
                write((
                    ord_, e.record_id, e.request_id, e.model, e.version, e.timestamp_us,
                    e.latency_us, e.status, e.inputs, e.outputs,
                    json.dumps(e.metadata) if e.metadata else _EMPTY_JSON,
                    e.payload_dropped, e.arm, e.experiment_id, e.routing_key_hash, e.shadow,
                ))
    except dbapi.Error as err:
        # The driver's error, raw: wrap it as SQLAlchemy does for its own statements, so
        # the caller's translation (StorageUnavailable, InvalidArgument, …) applies.
        invalidated = conn.dialect.is_disconnect(err, dbapi_conn, None)
        if invalidated:
            conn.invalidate(err)
        raise exc.DBAPIError.instance(
            _PG_COPY, None, err, dbapi.Error, connection_invalidated=invalidated,
            dialect=conn.dialect,
        ) from err
    conn.exec_driver_sql(_PG_MOVE)


def _request_row(e: RequestEntry) -> dict[str, Any]:
    return {
        "record_id": e.record_id, "request_id": e.request_id, "model": e.model,
        "version": e.version, "ts": e.timestamp_us, "latency_us": e.latency_us,
        "status": e.status, "inputs": e.inputs, "outputs": e.outputs,
        "metadata": e.metadata, "payload_dropped": e.payload_dropped, "arm": e.arm,
        "experiment_id": e.experiment_id, "routing_key_hash": e.routing_key_hash,
        "shadow": e.shadow,
    }


def _feedback_row(e: FeedbackEntry) -> dict[str, Any]:
    label = e.label
    return {
        "feedback_id": e.feedback_id, "request_id": e.request_id, "model": e.model,
        "label_kind": label.kind,
        "label_int": label.value if label.kind == "int" else None,
        "label_float": label.value if label.kind == "float" else None,
        "label_tensor": encode_tensors([label.value]) if isinstance(label.value, Tensor)
        else None,
        "ts": e.timestamp_us, "received_at": e.received_at_us,
    }


def _label(kind: str, as_int: int | None, as_float: float | None, blob: bytes | None) -> Label:
    if kind == "int" and as_int is not None:
        return Label("int", int(as_int))
    if kind == "float" and as_float is not None:
        return Label("float", float(as_float))
    if kind == "tensor" and blob is not None:
        (tensor,) = decode_tensors(blob)
        return Label("tensor", tensor)
    raise ConflictError(f"stored feedback has an inconsistent label (kind '{kind}')")


def _feedback_entry(row: Row[Any]) -> FeedbackEntry:
    return FeedbackEntry(
        feedback_id=row.feedback_id, request_id=row.request_id, model=row.model,
        label=_label(row.label_kind, row.label_int, row.label_float, row.label_tensor),
        timestamp_us=row.ts, received_at_us=row.received_at,
    )


def _logged_request(row: Row[Any]) -> LoggedRequest:
    feedback = None
    if row.feedback_id is not None:
        feedback = JoinedFeedback(
            feedback_id=row.feedback_id,
            label=_label(row.label_kind, row.label_int, row.label_float, row.label_tensor),
            timestamp_us=row.feedback_ts, received_at_us=row.received_at,
            count=int(row.feedback_count),
        )
    captured = row.inputs is not None
    return LoggedRequest(
        record_id=row.record_id, request_id=row.request_id, model=row.model,
        version=row.version, timestamp_us=row.ts, latency_us=row.latency_us,
        status=row.status,
        inputs=decode_tensors(row.inputs) if row.inputs is not None else (),
        outputs=decode_tensors(row.outputs) if row.outputs is not None else (),
        metadata=dict(row.metadata), payload_dropped=bool(row.payload_dropped),
        payload_captured=captured, arm=row.arm, experiment_id=row.experiment_id,
        routing_key_hash=row.routing_key_hash, shadow=bool(row.shadow), feedback=feedback,
    )
