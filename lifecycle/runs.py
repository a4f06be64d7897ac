"""Run tracking: every retraining run of a model, its steps, and why it started.

A repository over ``Database`` (SQLAlchemy Core on ``runs`` and ``run_steps``): one
transaction per method, frozen dataclasses out; thread-safe.

A run is ``queued`` (claimed, waiting for a worker), ``running``, then ``succeeded`` (a
version was registered and deployed by policy), ``rejected`` (the candidate failed its
gates or its shadow check; it is registered as ``rejected``) or ``failed`` (an error:
``error`` holds the reason and, for a crash, the traceback).

At most one run per model is ``queued`` or ``running``: a unique partial index on the
table enforces it, so two threads, processes or replicas asking at once get one run and
one ``RunInProgress``. A process that dies leaves its run active; ``fail_stale`` fails
runs whose heartbeat stopped, which frees the model again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import RowMapping, func, insert, select, update
from sqlalchemy.engine import CursorResult

from lifecycle.db import Database, ModelRow, rowcount, run_step_table, run_table
from lifecycle.errors import ConflictError, InvalidArgument, ModelNotFound
from lifecycle.loop_errors import RunInProgress, RunNotFound

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "FINAL_RUN_STATUSES",
    "RUN_STATUSES",
    "Run",
    "RunStep",
    "RunStore",
]

RUN_STATUSES = ("queued", "running", "succeeded", "rejected", "failed")
ACTIVE_RUN_STATUSES = ("queued", "running")
FINAL_RUN_STATUSES = ("succeeded", "rejected", "failed")
STEP_STATUSES = ("running", "succeeded", "failed")
_R = run_table.c
_S = run_step_table.c


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunStep:
    """One pipeline step: ``detail`` holds its params and metrics, ``log`` its lines."""

    position: int
    name: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    log: str = ""


@dataclass(frozen=True)
class Run:
    id: int
    model: str
    status: str
    trigger: str
    reason: str
    actor: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    outcome: str
    error: str
    dataset_id: int | None
    candidate_version: int | None
    champion_version: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime
    steps: tuple[RunStep, ...] = ()
    epoch: int | None = None
    replica: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES

    def step(self, name: str) -> RunStep | None:
        """The last step called ``name``, or None."""
        return next((s for s in reversed(self.steps) if s.name == name), None)


class RunStore:
    """Repository of runs; see the module docstring. Raises ``ModelNotFound``,
    ``RunNotFound``, ``RunInProgress``, ``InvalidArgument``, ``StorageUnavailable``."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._db = db
        self._clock = clock

    # ------------------------------------------------------------------ lifecycle

    def create(
        self, model: str, *, trigger: str, reason: str, actor: str,
        params: Mapping[str, Any] | None = None, epoch: int | None = None,
        replica: str | None = None,
    ) -> Run:
        """Claim the model's run slot: a new ``queued`` run, or ``RunInProgress``.
        ``epoch``/``replica``: the leader that will execute it; None leaves it for the
        leader to ``claim`` (a run asked for on another replica)."""
        if not trigger or not actor:
            raise InvalidArgument("a run needs a trigger and an actor")
        now = self._clock()
        payload = _json(params or {}, "params")
        try:
            with self._db.write() as s:
                if s.get(ModelRow, model) is None:
                    raise ModelNotFound(model)
                active = s.scalar(select(_R.id).where(
                    _R.model == model, _R.status.in_(ACTIVE_RUN_STATUSES)))
                if active is not None:
                    raise RunInProgress(model, int(active))
                result = s.execute(insert(run_table).values(
                    model=model, status="queued", trigger=trigger, reason=reason, actor=actor,
                    params=payload, metrics={}, outcome="", error="", created_at=now,
                    heartbeat_at=now, epoch=epoch, replica=replica))
                run_id = _inserted_id(result)
                return _run(s.execute(select(run_table).where(_R.id == run_id)).mappings().one())
        except RunInProgress:
            raise
        except ConflictError as err:
            # The unique index refused it: another writer claimed the slot first.
            raise RunInProgress(model) from err

    def start(self, run_id: int) -> Run:
        """``queued`` → ``running``; ``RunNotFound`` if the run is not queued any more."""
        now = self._clock()
        return self._change(run_id, ("queued",), status="running", started_at=now,
                            heartbeat_at=now)

    def claim(self, run_id: int, *, epoch: int, replica: str) -> Run:
        """Take a queued run nobody executes yet for the leader of ``epoch``;
        ``RunNotFound`` if it is not queued and unclaimed any more."""
        return self._change(run_id, ("queued",), epoch=epoch, replica=replica,
                            heartbeat_at=self._clock(), unclaimed=True)

    def unclaimed(self) -> list[Run]:
        """Queued runs no leader has claimed, oldest first."""
        with self._db.read() as s:
            return [_run(r) for r in s.execute(select(run_table).where(
                _R.status == "queued", _R.epoch.is_(None)).order_by(_R.id)).mappings()]

    def fail_orphaned(self, epoch: int, *, reason: str) -> list[Run]:
        """Fail every active run executed under a leader epoch older than ``epoch`` (its
        leader is gone); the runs as failed."""
        now = self._clock()
        with self._db.write() as s:
            ids = [int(i) for i in s.scalars(select(_R.id).where(
                _R.status.in_(ACTIVE_RUN_STATUSES), _R.epoch.is_not(None), _R.epoch < epoch))]
            for run_id in ids:
                _end_open_steps(s, run_id, now, reason)
            if ids:
                s.execute(update(run_table).where(_R.id.in_(ids)).values(
                    status="failed", error=reason, finished_at=now, heartbeat_at=now))
            return [_run(r) for r in s.execute(
                select(run_table).where(_R.id.in_(ids)).order_by(_R.id)).mappings()]

    def heartbeat(self, run_id: int) -> None:
        """Mark an active run alive now (no-op on a finished one)."""
        with self._db.write() as s:
            s.execute(update(run_table).where(_R.id == run_id, _R.status.in_(
                ACTIVE_RUN_STATUSES)).values(heartbeat_at=self._clock()))

    def update(
        self, run_id: int, *, metrics: Mapping[str, Any] | None = None,
        dataset_id: int | None = None, candidate_version: int | None = None,
        champion_version: int | None = None,
    ) -> None:
        """Merge ``metrics`` into the run's and set whichever link is given."""
        with self._db.write() as s:
            current = s.scalar(select(_R.metrics).where(_R.id == run_id))
            if current is None:
                raise RunNotFound(run_id)
            values: dict[str, Any] = {"heartbeat_at": self._clock()}
            if metrics:
                values["metrics"] = {**current, **_json(dict(metrics), "metrics")}
            for key, value in (("dataset_id", dataset_id), ("candidate_version",
                               candidate_version), ("champion_version", champion_version)):
                if value is not None:
                    values[key] = value
            s.execute(update(run_table).where(_R.id == run_id).values(**values))

    def finish(self, run_id: int, status: str, *, outcome: str = "", error: str = "") -> Run:
        """End an active run as ``succeeded``, ``rejected`` or ``failed``; a step still
        ``running`` is failed with it. ``RunNotFound`` if it is not active."""
        if status not in FINAL_RUN_STATUSES:
            raise InvalidArgument(f"a run finishes as one of {FINAL_RUN_STATUSES}, got {status!r}")
        now = self._clock()
        with self._db.write() as s:
            _end_open_steps(s, run_id, now, error or status)
        return self._change(run_id, ACTIVE_RUN_STATUSES, status=status, outcome=outcome,
                            error=error, finished_at=now, heartbeat_at=now)

    def fail_stale(self, older_than: datetime, *, reason: str) -> list[int]:
        """Fail every active run whose heartbeat is older than ``older_than``; their ids."""
        now = self._clock()
        with self._db.write() as s:
            ids = [int(i) for i in s.scalars(select(_R.id).where(
                _R.status.in_(ACTIVE_RUN_STATUSES), _R.heartbeat_at < older_than))]
            for run_id in ids:
                _end_open_steps(s, run_id, now, reason)
            if ids:
                s.execute(update(run_table).where(_R.id.in_(ids)).values(
                    status="failed", error=reason, finished_at=now, heartbeat_at=now))
            return ids

    def _change(self, run_id: int, allowed: tuple[str, ...], *, unclaimed: bool = False,
                **values: Any) -> Run:
        where = [_R.id == run_id, _R.status.in_(allowed)]
        if unclaimed:
            where.append(_R.epoch.is_(None))
        with self._db.write() as s:
            result = s.execute(update(run_table).where(*where).values(**values))
            if rowcount(result) != 1:
                raise RunNotFound(run_id)
            return _run(s.execute(select(run_table).where(_R.id == run_id)).mappings().one())

    # ---------------------------------------------------------------------- steps

    def begin_step(self, run_id: int, name: str, detail: Mapping[str, Any] | None = None) -> int:
        """Record that step ``name`` started; returns its position in the run."""
        now = self._clock()
        with self._db.write() as s:
            position = s.scalar(select(func.coalesce(func.max(_S.position), -1) + 1)
                                .where(_S.run_id == run_id))
            s.execute(insert(run_step_table).values(
                run_id=run_id, position=position, name=name, status="running",
                started_at=now, detail=_json(dict(detail or {}), "detail"), log=""))
            s.execute(update(run_table).where(_R.id == run_id).values(heartbeat_at=now))
            return int(position or 0)

    def end_step(
        self, run_id: int, position: int, status: str, *, duration_s: float,
        detail: Mapping[str, Any] | None = None, log: str = "",
    ) -> None:
        """Close a step as ``succeeded`` or ``failed``, merging ``detail``."""
        if status not in STEP_STATUSES[1:]:
            raise InvalidArgument(f"a step ends as succeeded or failed, got {status!r}")
        now = self._clock()
        with self._db.write() as s:
            where = (_S.run_id == run_id, _S.position == position)
            current = s.scalar(select(_S.detail).where(*where))
            if current is None:
                raise RunNotFound(run_id)
            merged = {**current, **_json(dict(detail or {}), "detail")}
            s.execute(update(run_step_table).where(*where).values(
                status=status, finished_at=now, duration_s=duration_s, detail=merged, log=log))
            s.execute(update(run_table).where(_R.id == run_id).values(heartbeat_at=now))

    # ---------------------------------------------------------------------- reads

    def get(self, run_id: int) -> Run:
        """The run with its steps."""
        with self._db.read() as s:
            row = s.execute(select(run_table).where(_R.id == run_id)).mappings().first()
            if row is None:
                raise RunNotFound(run_id)
            steps = s.execute(select(run_step_table).where(_S.run_id == run_id)
                              .order_by(_S.position)).mappings().all()
            return _run(row, tuple(_step(r) for r in steps))

    def list(
        self, model: str | None = None, *, status: str | None = None, limit: int = 50,
    ) -> list[Run]:
        """Runs newest first, without their steps."""
        if not 0 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be within 0..10000, got {limit}")
        query = select(run_table).order_by(_R.id.desc()).limit(limit)
        if model is not None:
            query = query.where(_R.model == model)
        if status is not None:
            query = query.where(_R.status == status)
        with self._db.read() as s:
            return [_run(r) for r in s.execute(query).mappings()]

    def active(self, model: str) -> Run | None:
        with self._db.read() as s:
            row = s.execute(select(run_table).where(
                _R.model == model, _R.status.in_(ACTIVE_RUN_STATUSES))).mappings().first()
            return None if row is None else _run(row)

    def last(self, model: str, *, trigger: str | None = None) -> Run | None:
        """The model's newest run (of ``trigger`` when given), whatever its status."""
        query = select(run_table).where(_R.model == model).order_by(_R.id.desc()).limit(1)
        if trigger is not None:
            query = query.where(_R.trigger == trigger)
        with self._db.read() as s:
            row = s.execute(query).mappings().first()
            return None if row is None else _run(row)


def _end_open_steps(s: Any, run_id: int, now: datetime, why: str) -> None:
    s.execute(update(run_step_table).where(_S.run_id == run_id, _S.status == "running")
              .values(status="failed", finished_at=now, log=why))


def _run(row: RowMapping, steps: tuple[RunStep, ...] = ()) -> Run:
    return Run(
        id=int(row["id"]), model=row["model"], status=row["status"], trigger=row["trigger"],
        reason=row["reason"], actor=row["actor"], params=dict(row["params"]),
        metrics=dict(row["metrics"]), outcome=row["outcome"], error=row["error"],
        dataset_id=row["dataset_id"], candidate_version=row["candidate_version"],
        champion_version=row["champion_version"], created_at=row["created_at"],
        started_at=row["started_at"], finished_at=row["finished_at"],
        heartbeat_at=row["heartbeat_at"], steps=steps, epoch=row["epoch"],
        replica=row["replica"],
    )


def _step(row: RowMapping) -> RunStep:
    return RunStep(
        position=row["position"], name=row["name"], status=row["status"],
        started_at=row["started_at"], finished_at=row["finished_at"],
        duration_s=row["duration_s"], detail=dict(row["detail"]), log=row["log"],
    )



def _json(value: Any, what: str) -> Any:
    """A JSON-safe copy (NaN and infinities become None), or ``InvalidArgument``."""
    try:
        return json.loads(json.dumps(_finite(value)))
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"{what} must be JSON-serializable: {err}") from err


def _finite(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _inserted_id(result: Any) -> int:
    key = cast(CursorResult[Any], result).inserted_primary_key
    if key is None:  # every dialect we support returns it for a single-row insert
        raise RuntimeError("the database did not return the new row's id")
    return int(key[0])
