"""Storage plumbing: the engine, transaction scopes, the table mapping and migrations.

SQLAlchemy is imported only here and by the repositories (``registry``); rows never
leave them. SQLite is the embedded default (one file in the data dir, WAL mode);
PostgreSQL (``postgresql+psycopg://user:password@host:port/db``, psycopg 3; a bare
``postgresql://`` gets psycopg too) runs the same code and the same migrations.

Transactions: ``Database.read()`` yields a session in a plain transaction;
``Database.write()`` yields a session in a write transaction that commits on exit.
Write transactions are serialized, so every repository's read-modify-write is atomic
on both databases:

- on SQLite a write transaction starts with ``BEGIN IMMEDIATE`` (the database write
  lock is taken up front, so two writers never deadlock upgrading their locks) and
  writers of one ``Database`` queue on an in-process lock first (fair and instant,
  unlike SQLite's sleeping busy handler);
- on PostgreSQL it first takes a transaction-scoped advisory lock
  (``pg_advisory_xact_lock``, released at commit or rollback), which serializes the
  writers of every process and replica on the database. ``write(exclusive=False)``
  skips it, for writes that are safe without it (the request log's idempotent inserts
  and batched purges).

Migrations run under an advisory lock of their own on PostgreSQL, and in one
``BEGIN IMMEDIATE`` transaction on SQLite: processes starting together migrate one
after the other. Database errors become domain errors at this boundary:

    IntegrityError                                  → ConflictError
    OperationalError, InterfaceError, lost connection → StorageUnavailable
    DataError (a value the column cannot hold)      → InvalidArgument
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Double,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    exc,
    make_url,
    text,
    true,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from lifecycle.domain import Event, Model, ModelVersion, Signature
from lifecycle.errors import ConflictError, InvalidArgument, StorageUnavailable

__all__ = [
    "AliasHistoryRow",
    "AliasRow",
    "Database",
    "EventRow",
    "LoadRow",
    "ModelRow",
    "VersionRow",
    "bandit_count_table",
    "canary_table",
    "dataset_link_table",
    "dataset_table",
    "feedback_table",
    "lease_table",
    "lock_for_migration",
    "make_engine",
    "migrate",
    "replica_table",
    "request_log_table",
    "run_step_table",
    "rowcount",
    "run_table",
    "traffic_policy_table",
    "translate_errors",
    "trigger_table",
]

BUSY_TIMEOUT_MS = 5000
# Advisory lock keys (64-bit, fixed, per database): one for migrations, one for writers.
MIGRATION_LOCK_KEY = 0x6977_6D69_6772_6174  # "iwmigrat"
WRITE_LOCK_KEY = 0x6977_7772_6974_6572  # "iwwriter"
PG_CONNECT_TIMEOUT_S = 5
# SQLSTATE lock_not_available: a lock wait ran past ``lock_timeout``.
_PG_LOCK_NOT_AVAILABLE = "55P03"
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Execution option read by the ``begin`` hook: which BEGIN a SQLite transaction emits.
_SQLITE_BEGIN = "lifecycle_sqlite_begin"


def make_engine(url: str) -> Engine:
    """Build the engine for ``url``.

    SQLite file databases get their parent directory created, WAL journaling,
    ``busy_timeout`` and foreign keys on every connection, and SQLAlchemy-emitted
    ``BEGIN`` (so write transactions can be ``BEGIN IMMEDIATE``). Raises
    ``StorageUnavailable`` when the parent directory cannot be created.

    PostgreSQL URLs without a driver get psycopg 3; connections are checked before use
    (``pool_pre_ping``: a restarted server costs no failed call) and give up connecting
    after ``PG_CONNECT_TIMEOUT_S``.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S,
                          "application_name": "inference-gateway"},
        )
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        try:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageUnavailable(
                f"cannot create the directory of SQLite database '{database}': {err}"
            ) from err
    engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module: it would otherwise start
        # transactions lazily and deferred, which is how writers deadlock.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL keeps every commit atomic and crash-safe for the
            # process; only a power loss can drop the last commits. FULL would
            # fsync every commit, which the request log's batches cannot afford.
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _is_postgresql(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise database errors as domain errors (see the module docstring)."""
    try:
        yield
    except exc.IntegrityError as err:
        raise ConflictError(f"conflicting write: {err.orig}") from err
    except (exc.OperationalError, exc.InterfaceError) as err:
        raise StorageUnavailable(f"database unavailable: {err.orig}") from err
    except exc.DataError as err:
        # Too long for its column, NUL in a text value, out of range: PostgreSQL checks
        # what SQLite would store as is.
        raise InvalidArgument(f"the database refused a value: {err.orig}") from err
    except exc.DBAPIError as err:
        if err.connection_invalidated:
            raise StorageUnavailable(f"database connection lost: {err.orig}") from err
        raise


class Database:
    """Transaction scopes over one engine; thread-safe.

    Every repository method runs in exactly one ``read()`` or ``write()`` scope.
    ``write()`` scopes must not nest (that would wait on itself), and doing so
    raises ``RuntimeError``. The SQLite writer lock is per instance: build one
    ``Database`` per database file and share it. A writer that waits longer than
    ``lock_timeout_s`` for its write slot (SQLite's in-process lock, PostgreSQL's
    advisory lock) gets ``StorageUnavailable``; on PostgreSQL the same bound applies to
    every lock a write transaction waits for.
    """

    def __init__(self, engine: Engine, *, lock_timeout_s: float = 30.0) -> None:
        self.engine = engine
        self._sqlite = _is_sqlite(engine)
        self._postgresql = _is_postgresql(engine)
        self._write_engine = (
            engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"}) if self._sqlite else engine
        )
        self._lock = threading.Lock()
        self._lock_timeout_s = lock_timeout_s
        self._local = threading.local()

    @classmethod
    def from_url(cls, url: str) -> Database:
        return cls(make_engine(url))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; rolled back on exit."""
        # The session begins on first use and rolls back when it closes.
        with translate_errors(), Session(self.engine) as session:
            yield session

    @contextmanager
    def write(self, *, exclusive: bool = True) -> Iterator[Session]:
        """A session in one write transaction: commits on normal exit, rolls back on error.

        ``exclusive=False`` lets the transaction run beside other writers on PostgreSQL
        (no advisory lock): only for writes that need no read-modify-write atomicity.
        SQLite serializes every writer regardless. Raises ``ConflictError``/
        ``StorageUnavailable`` translated from the database, or whatever the body
        raised (after rolling back).
        """
        if getattr(self._local, "writing", False):
            raise RuntimeError("Database.write() scopes must not nest")
        locked = False
        if self._sqlite:
            locked = self._lock.acquire(timeout=self._lock_timeout_s)
            if not locked:
                raise StorageUnavailable(
                    f"database busy: no write slot within {self._lock_timeout_s:g} s"
                )
        self._local.writing = True
        try:
            with (
                translate_errors(),
                Session(self._write_engine, expire_on_commit=False) as session,
                session.begin(),
            ):
                if self._postgresql:
                    self._begin_postgresql_write(session, exclusive)
                yield session
        finally:
            self._local.writing = False
            if locked:
                self._lock.release()

    def _begin_postgresql_write(self, session: Session, exclusive: bool) -> None:
        """Bound every lock wait of the transaction by ``lock_timeout_s`` (as SQLite's busy
        timeout bounds its writers: a table locked elsewhere fails the write instead of
        hanging it) and, when ``exclusive``, take the writers' advisory lock."""
        timeout_ms = max(1, int(self._lock_timeout_s * 1000))
        # SET LOCAL: the setting ends with the transaction, like the advisory lock.
        session.execute(text(f"SET LOCAL lock_timeout = {timeout_ms}"))
        if not exclusive:
            return
        try:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
        except exc.OperationalError as err:
            if getattr(err.orig, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE:
                raise StorageUnavailable(
                    f"database busy: no write slot within {self._lock_timeout_s:g} s"
                ) from err
            raise

    def close(self) -> None:
        """Close pooled connections (the engine stays usable and reconnects on demand)."""
        self.engine.dispose()


MIGRATION_WAIT_S = 120.0


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest revision; idempotent, safe at every start.

    The Alembic configuration is built in code and points at the migrations
    shipped inside this package, so it works from any working directory. The whole
    upgrade runs in one transaction (DDL is transactional on both databases) that
    first serializes migrators: ``BEGIN IMMEDIATE`` on SQLite, the migration advisory
    lock on PostgreSQL (see ``lock_for_migration``). So processes and replicas starting
    together migrate one after the other, and the later ones find the schema at head.
    Raises ``StorageUnavailable`` when the database cannot be reached.
    """
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    runner = engine
    if _is_sqlite(engine):
        runner = engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
    deadline = time.monotonic() + MIGRATION_WAIT_S
    while True:
        try:
            with translate_errors(), runner.begin() as connection:
                lock_for_migration(connection)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            return
        except StorageUnavailable as err:
            # SQLite's busy timeout is shorter than a migration on a busy machine: a
            # process that found another migrating waits for it, up to MIGRATION_WAIT_S.
            if not (_is_sqlite(engine) and "locked" in str(err)
                    and time.monotonic() < deadline):
                raise
            time.sleep(0.2)


def lock_for_migration(connection: Connection) -> None:
    """On PostgreSQL, wait for the migration advisory lock in ``connection``'s transaction.

    ``pg_advisory_xact_lock`` on ``MIGRATION_LOCK_KEY``: held until that transaction
    commits or rolls back (a migrator that dies releases it with its connection), so
    the next migrator reads the schema the previous one committed. No-op elsewhere
    (SQLite's ``BEGIN IMMEDIATE`` already serializes).
    """
    if _is_postgresql(connection):
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE matched. DML through ``Session.execute`` returns a
    ``CursorResult``; its static type is ``Result``, which has no ``rowcount``."""
    return int(cast(CursorResult[Any], result).rowcount)


# ---------------------------------------------------------------- table mapping


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect.

    SQLite has no time zone type: values are stored as naive UTC and made aware
    again when read. Naive input is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


# The DDL lives in migrations/versions; these mappings must describe the same tables
# (a test compares them). Rows leave the repository only through ``to_domain()``.


class ModelRow(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    task: Mapped[str] = mapped_column(String(64), default="")
    signature: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    serving: Mapped[bool] = mapped_column(default=True, server_default=true())

    def to_domain(self) -> Model:
        return Model(self.name, self.task, Signature.from_json(self.signature), self.created_at)


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model", "version", name="uq_versions_model_version"),
        UniqueConstraint("model", "sha256", name="uq_versions_model_sha256"),
        CheckConstraint(
            "status IN ('registered', 'archived', 'rejected')", name="ck_versions_status"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128), ForeignKey("models.name"))
    version: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any]]
    # ``metadata`` is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)

    def to_domain(self) -> ModelVersion:
        return ModelVersion(
            model=self.model,
            version=self.version,
            status=self.status,
            sha256=self.sha256,
            size=self.size,
            created_at=self.created_at,
            description=self.description,
            tags=tuple(self.tags),
            metadata=dict(self.meta),
        )


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model", "version"], ["versions.model", "versions.version"], name="fk_aliases_version"
        ),
    )

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int]
    updated_at: Mapped[datetime]


class AliasHistoryRow(Base):
    """Every value an alias took, in order. Rows are only appended, except that a
    rollback stamps ``popped_at`` on the entry it undoes: the unpopped rows of an
    alias form the rollback stack, whose top is the alias's current version."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_model_alias", "model", "alias", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    previous: Mapped[int | None]
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    popped_at: Mapped[datetime | None]
    popped_by: Mapped[str | None] = mapped_column(String(128))


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_model_id", "model", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[int | None]
    detail: Mapped[dict[str, Any]]

    def to_domain(self) -> Event:
        return Event(
            self.id, self.time, self.actor, self.action, self.model, self.version, self.detail
        )


class LoadRow(Base):
    __tablename__ = "loads"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model", "version"], ["versions.model", "versions.version"], name="fk_loads_version"
        ),
    )

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime]


# ------------------------------------------------------------------ request log
# Core tables (bulk inserts and set-based queries, no ORM identity map on the hot write
# path); used only by ``lifecycle.request_store``. Times are integer epoch microseconds.
# An INTEGER primary key on SQLite is the rowid (no extra index); BIGINT elsewhere.
_ROW_ID = BigInteger().with_variant(Integer, "sqlite")

request_log_table = Table(
    "request_log",
    Base.metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("record_id", String(32), nullable=False),
    Column("request_id", String(256), nullable=False),
    Column("model", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("latency_us", BigInteger, nullable=False),
    Column("status", String(32), nullable=False),
    Column("inputs", LargeBinary, nullable=True),
    Column("outputs", LargeBinary, nullable=True),
    Column("metadata", JSON, nullable=False),
    Column("payload_dropped", Boolean, nullable=False),
    Column("arm", String(64), nullable=False),
    Column("experiment_id", String(128), nullable=False),
    Column("routing_key_hash", String(64), nullable=False),
    Column("shadow", Boolean, nullable=False),
    UniqueConstraint("record_id", name="uq_request_log_record_id"),
    Index("ix_request_log_model_request", "model", "request_id", "ts"),
    Index("ix_request_log_model_ts", "model", "ts"),
    Index("ix_request_log_ts", "ts"),
)

feedback_table = Table(
    "feedback",
    Base.metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("feedback_id", String(32), nullable=False),
    Column("request_id", String(256), nullable=False),
    Column("model", String(128), nullable=False),
    Column("label_kind", String(8), nullable=False),
    Column("label_int", BigInteger, nullable=True),
    Column("label_float", Double, nullable=True),
    Column("label_tensor", LargeBinary, nullable=True),
    Column("ts", BigInteger, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    UniqueConstraint("feedback_id", name="uq_feedback_feedback_id"),
    CheckConstraint("label_kind IN ('int', 'float', 'tensor')", name="ck_feedback_label_kind"),
    Index("ix_feedback_model_request", "model", "request_id", "received_at"),
    Index("ix_feedback_received_at", "received_at"),
)


# -------------------------------------------------------------- traffic policies
# Core tables used only by ``lifecycle.policies``: one policy per model, the latest canary
# ramp per model, and per-(experiment, version) bandit reward counts.

traffic_policy_table = Table(
    "traffic_policies",
    Base.metadata,
    Column("model", String(128), ForeignKey("models.name"), primary_key=True),
    Column("experiment_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("body", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("actor", String(128), nullable=False),
    CheckConstraint("kind IN ('split', 'canary', 'bandit')", name="ck_traffic_policies_kind"),
)

canary_table = Table(
    "canaries",
    Base.metadata,
    Column("model", String(128), ForeignKey("models.name"), primary_key=True),
    Column("experiment_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("champion", Integer, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("step_started_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Compare-and-set token: every transition requires the revision it read and bumps it.
    Column("revision", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    CheckConstraint(
        "status IN ('running', 'promoting', 'promoted', 'aborted', 'ended')",
        name="ck_canaries_status",
    ),
)

bandit_count_table = Table(
    "bandit_counts",
    Base.metadata,
    Column("experiment_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("model", String(128), nullable=False),
    Column("successes", BigInteger, nullable=False),
    Column("failures", BigInteger, nullable=False),
    Index("ix_bandit_counts_model", "model"),
)


# ------------------------------------------------------------------ lifecycle loop
# Core tables used only by ``lifecycle.runs``, ``lifecycle.datasets`` and
# ``lifecycle.triggers``. Run and dataset ids are row ids; windows are epoch microseconds.

_ACTIVE_RUN = "status IN ('queued', 'running')"

run_table = Table(
    "runs",
    Base.metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("model", String(128), ForeignKey("models.name"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("params", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("error", Text, nullable=False),
    Column("dataset_id", BigInteger, nullable=True),
    Column("candidate_version", Integer, nullable=True),
    Column("champion_version", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("epoch", Integer, nullable=True),
    Column("replica", String(200), nullable=True),
    CheckConstraint(
        "status IN ('queued', 'running', 'succeeded', 'rejected', 'failed')",
        name="ck_runs_status",
    ),
    Index("ix_runs_model_id", "model", "id"),
    # At most one active run per model, enforced by the database itself so that two
    # schedulers (threads, processes or replicas) can never overlap.
    Index(
        "uq_runs_model_active",
        "model",
        unique=True,
        sqlite_where=text(_ACTIVE_RUN),
        postgresql_where=text(_ACTIVE_RUN),
    ),
)

run_step_table = Table(
    "run_steps",
    Base.metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, ForeignKey("runs.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("name", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("duration_s", Double, nullable=True),
    Column("detail", JSON, nullable=False),
    Column("log", Text, nullable=False),
    UniqueConstraint("run_id", "position", name="uq_run_steps_run_position"),
    CheckConstraint(
        "status IN ('running', 'succeeded', 'failed')", name="ck_run_steps_status"
    ),
)

dataset_table = Table(
    "datasets",
    Base.metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("model", String(128), ForeignKey("models.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("n_features", Integer, nullable=False),
    Column("source", String(64), nullable=False),
    Column("window_start_us", BigInteger, nullable=True),
    Column("window_end_us", BigInteger, nullable=True),
    Column("label_counts", JSON, nullable=False),
    Column("stats", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("run_id", BigInteger, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("model", "version", name="uq_datasets_model_version"),
    UniqueConstraint("model", "content_sha256", name="uq_datasets_model_content"),
)

# Which dataset a version was trained on (its lineage, readable without the version's
# metadata, so a version registered before the loop existed can get one later).
dataset_link_table = Table(
    "dataset_links",
    Base.metadata,
    Column("model", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("dataset_id", BigInteger, ForeignKey("datasets.id"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    ForeignKeyConstraint(
        ["model", "version"], ["versions.model", "versions.version"],
        name="fk_dataset_links_version",
    ),
)

# One row per model whose triggers were ever set: the list as plain JSON. A row with an
# empty list means "no triggers" (and stops config from seeding them again).
trigger_table = Table(
    "triggers",
    Base.metadata,
    Column("model", String(128), ForeignKey("models.name"), primary_key=True),
    Column("specs", JSON, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("actor", String(128), nullable=False),
)


# ------------------------------------------------------------------------- replicas
# Used only by ``lifecycle.leases`` and ``lifecycle.replicas``.

lease_table = Table(
    "leases",
    Base.metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("beat", BigInteger, nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("renewed_at", UTCDateTime, nullable=False),
)

replica_table = Table(
    "replicas",
    Base.metadata,
    Column("id", String(200), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("serving", JSON, nullable=False),
)
