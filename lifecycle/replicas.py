"""What every gateway process serves, as it last told the shared database.

Each process (a replica, or a worker of ``gateway serve --workers``) publishes one row of
``replicas`` every few seconds and after each change of what it serves: per model, the
production version it answers with, the versions it holds loaded (or failed to load), the
traffic policy it routes by and whether it is ready. ``GetModel`` reads every row, so one
admin call shows whether the replicas agree. A process removes its row on a clean stop;
the rows of processes that were killed are pruned once silent for long (``prune``).

``ReplicaStore`` is a repository over ``Database`` (SQLAlchemy Core on ``replicas``, and
a read of the ``leases`` row ``control`` for the leader flag): one transaction per
method, frozen dataclasses out; thread-safe. Its writes touch one process's own row (or
rows silent for long) in a single statement, so they run beside the registry's writers
(``write(exclusive=False)``).

The ``serving`` JSON, kept small (a few hundred bytes per model)::

    {"period_s": 2.0,
     "models": {"fraud": {"production": 2, "ready": true, "loaded": [1, 2], "failed": [3],
                          "policy": "canary", "experiment": "e-…", "weights": [[1, 0.9],
                                                                              [2, 0.1]]}}}

Keys holding a default (None, false, empty) are left out. A row another version of the
gateway wrote is read leniently: what does not parse is ignored, never raised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Insert, delete, insert, select, update

from lifecycle.db import Database, lease_table, replica_table, rowcount
from lifecycle.errors import InvalidArgument
from lifecycle.leases import CONTROL_LEASE

__all__ = [
    "ModelServing",
    "ReplicaServing",
    "ReplicaState",
    "ReplicaStore",
    "stale_after_s",
]

STALE_PERIODS = 3
STALE_MARGIN_S = 5.0
_MAX_ID = 200
_MAX_HOST = 255
_C = replica_table.c
_L = lease_table.c


def _utc_now() -> datetime:
    return datetime.now(UTC)


def stale_after_s(period_s: float) -> float:
    """How long a replica publishing every ``period_s`` may stay silent before it is
    reported stale: three missed publications, plus a margin for a busy database."""
    return STALE_PERIODS * period_s + STALE_MARGIN_S


@dataclass(frozen=True)
class ModelServing:
    """What one process serves of one model.

    ``production``: the version answering requests that name none (None: nothing);
    ``loaded``/``failed``: versions held loaded, and versions whose last load failed,
    ascending; ``policy``: the traffic policy's kind (``split``, ``canary``, ``bandit``;
    "" without one), ``experiment`` its id and ``weights`` each version's primary share.
    """

    production: int | None = None
    ready: bool = False
    loaded: tuple[int, ...] = ()
    failed: tuple[int, ...] = ()
    policy: str = ""
    experiment: str = ""
    weights: tuple[tuple[int, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.production is not None:
            data["production"] = self.production
        if self.ready:
            data["ready"] = True
        if self.loaded:
            data["loaded"] = list(self.loaded)
        if self.failed:
            data["failed"] = list(self.failed)
        if self.policy:
            data["policy"] = self.policy
        if self.experiment:
            data["experiment"] = self.experiment
        if self.weights:
            # PostgreSQL's JSON has no NaN or infinity.
            data["weights"] = [[v, round(w, 6)] for v, w in self.weights if math.isfinite(w)]
        return data

    @classmethod
    def from_json(cls, data: Any) -> ModelServing | None:
        """The entry, or None when it is not an object; malformed keys are dropped."""
        if not isinstance(data, Mapping):
            return None
        production = data.get("production")
        weights = data.get("weights")
        return cls(
            production=production if _is_version(production) else None,
            ready=data.get("ready") is True,
            loaded=_versions(data.get("loaded")),
            failed=_versions(data.get("failed")),
            policy=_text(data.get("policy")),
            experiment=_text(data.get("experiment")),
            weights=tuple(
                (int(pair[0]), float(pair[1])) for pair in (weights or ())
                if isinstance(weights, list) and isinstance(pair, list) and len(pair) == 2
                and _is_version(pair[0]) and isinstance(pair[1], int | float)
                and not isinstance(pair[1], bool) and math.isfinite(pair[1])
            ),
        )


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _versions(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(sorted({v for v in value if _is_version(v)}))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class ReplicaState:
    """One process's row: ``updated_at`` is its last publication (its own wall clock),
    ``period_s`` how often it publishes, ``leader`` whether it holds the control lease."""

    id: str
    host: str
    pid: int
    started_at: datetime
    updated_at: datetime
    period_s: float
    models: Mapping[str, ModelServing] = field(default_factory=dict)
    leader: bool = False

    def age_s(self, now: datetime) -> float:
        """Seconds since the last publication (0 when the clocks disagree the other way)."""
        return max(0.0, (now - self.updated_at).total_seconds())

    def stale(self, now: datetime) -> bool:
        """Silent for longer than ``stale_after_s(period_s)``: the process may be gone."""
        return self.age_s(now) > stale_after_s(self.period_s)

    def of_model(self, model: str, now: datetime) -> ReplicaServing:
        return ReplicaServing(self, self.models.get(model), self.age_s(now), self.stale(now))


@dataclass(frozen=True)
class ReplicaServing:
    """One replica's state of one model, as the admin API reports it: ``serving`` is None
    when the replica does not track the model (e.g. created after it started)."""

    replica: ReplicaState
    serving: ModelServing | None
    age_s: float
    stale: bool


class ReplicaStore:
    """Repository of the replicas' serving state; see the module docstring. Raises the
    ``Database``'s translated errors (``StorageUnavailable``...) and ``InvalidArgument``."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._db = db
        self._clock = clock

    def publish(
        self, replica_id: str, host: str, pid: int, started_at: datetime,
        serving: Mapping[str, ModelServing], *, period_s: float,
    ) -> ReplicaState:
        """Store (insert or replace) ``replica_id``'s row, stamped now; returns it (the
        leader flag unread: False)."""
        _check_text("replica_id", replica_id, _MAX_ID)
        _check_text("host", host, _MAX_HOST)
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < 2**31:
            raise InvalidArgument(f"pid must be an integer from 0 to 2**31-1, got {pid!r}")
        if started_at.tzinfo is None:
            raise InvalidArgument(f"started_at must be timezone-aware, got {started_at!r}")
        if not math.isfinite(period_s) or period_s <= 0:
            raise InvalidArgument(f"period_s must be a positive number, got {period_s}")
        now = self._clock()
        body = {"period_s": period_s,
                "models": {name: state.to_json() for name, state in sorted(serving.items())}}
        values = {"host": host, "pid": pid, "started_at": started_at, "updated_at": now,
                  "serving": body}
        # One statement on the process's own row: atomic without the writers' lock.
        with self._db.write(exclusive=False) as s:
            upsert = self._upsert(replica_id, values)
            if upsert is not None:
                s.execute(upsert)
            elif rowcount(s.execute(update(replica_table).where(_C.id == replica_id)
                                    .values(**values))) == 0:
                s.execute(insert(replica_table).values(id=replica_id, **values))
        return ReplicaState(replica_id, host, pid, started_at, now, period_s, dict(serving))

    def _upsert(self, replica_id: str, values: dict[str, Any]) -> Insert | None:
        if self._db.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif self._db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
        else:
            return None
        return dialect_insert(replica_table).values(id=replica_id, **values).on_conflict_do_update(
            index_elements=[_C.id], set_=values)

    def list(self) -> list[ReplicaState]:
        """Every replica's last publication, by id; ``leader`` marks the holder of the
        ``control`` lease (whether or not that lease is still being renewed)."""
        with self._db.read() as s:
            rows = s.execute(select(replica_table).order_by(_C.id)).mappings().all()
            holder = s.execute(
                select(_L.holder).where(_L.name == CONTROL_LEASE)).scalar_one_or_none()
        return [_state(row, leader=row["id"] == holder) for row in rows]

    def remove(self, replica_id: str) -> bool:
        """Forget ``replica_id`` (its clean stop); True when it had a row."""
        with self._db.write(exclusive=False) as s:
            result = s.execute(delete(replica_table).where(_C.id == replica_id))
            return bool(rowcount(result))

    def prune(self, older_than: timedelta) -> tuple[str, ...]:
        """Forget replicas silent for longer than ``older_than`` (killed, not stopped);
        returns their ids. A live one that was pruned (a long pause) comes back with its
        next publication."""
        if older_than <= timedelta(0):
            raise InvalidArgument(f"older_than must be positive, got {older_than}")
        cutoff = self._clock() - older_than
        with self._db.write(exclusive=False) as s:
            gone = s.execute(delete(replica_table).where(_C.updated_at < cutoff)
                             .returning(_C.id)).scalars().all()
        return tuple(sorted(gone))


def _check_text(name: str, value: str, limit: int) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise InvalidArgument(f"{name} must be 1 to {limit} characters, got {value!r}")


def _state(row: Any, *, leader: bool) -> ReplicaState:
    body = row["serving"] if isinstance(row["serving"], Mapping) else {}
    period = body.get("period_s")
    models = body.get("models")
    parsed = {}
    for name, entry in (models.items() if isinstance(models, Mapping) else ()):
        state = ModelServing.from_json(entry)
        if state is not None:
            parsed[str(name)] = state
    return ReplicaState(
        id=row["id"], host=row["host"], pid=int(row["pid"]), started_at=row["started_at"],
        updated_at=row["updated_at"],
        period_s=float(period) if isinstance(period, int | float) and not isinstance(
            period, bool) and math.isfinite(period) and period > 0 else 0.0,
        models=parsed, leader=leader,
    )
