"""Policy store: each model's traffic policy, its canary ramp and its bandit reward counts.

A repository over ``Database`` like the registry: every public method is one transaction
and returns frozen objects from ``lifecycle.traffic``; thread-safe. Policies survive
restarts and are shared by every replica on the same database.

Events (same table as the registry's, written in the same transaction as the change,
``detail["before"]``/``detail["after"]`` hold the policy as JSON or None):
``policy.set``, ``policy.clear``, ``experiment.end``, ``canary.start``, ``canary.advance``,
``canary.promoting``, ``canary.promoted``, ``canary.aborted``.

Invariant: a canary whose status is ``running`` always has its policy installed. Every
method that replaces or removes a policy marks such a canary ``ended`` in the same
transaction; a ``promoting`` one is left for its controller to finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping, delete, insert, select, update
from sqlalchemy.orm import Session

from lifecycle.db import (
    AliasRow,
    Database,
    EventRow,
    ModelRow,
    VersionRow,
    bandit_count_table,
    canary_table,
    rowcount,
    traffic_policy_table,
)
from lifecycle.domain import PRODUCTION
from lifecycle.errors import (
    ConflictError,
    InvalidArgument,
    ModelNotFound,
    PreconditionError,
    VersionNotFound,
)
from lifecycle.traffic import (
    ACTIVE_CANARY,
    CanarySpec,
    CanaryState,
    Policy,
    RewardCounts,
    Shadow,
)

__all__ = ["PolicyStore"]

_FINISHED = ("promoted", "aborted")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PolicyStore:
    """Repository of traffic policies, canary state and bandit counts.

    Raises ``ModelNotFound``/``VersionNotFound`` for unknown names, ``InvalidArgument``
    for malformed input, ``PreconditionError`` when the state forbids the change (e.g. a
    rejected version in a policy), ``ConflictError`` when a canary compare-and-set loses,
    ``StorageUnavailable`` when the database is unreachable.
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._db = db
        self._clock = clock

    # ---------------------------------------------------------------- policies

    def get_policy(self, model: str) -> Policy | None:
        """The model's policy, or None (100% production)."""
        with self._db.read() as s:
            return _policy(s, model)

    def list_policies(self) -> dict[str, Policy]:
        """Every installed policy by model (what a serving process polls to follow changes:
        compare with what it applied; a changed policy compares unequal)."""
        with self._db.read() as s:
            rows = s.execute(select(traffic_policy_table.c.model, traffic_policy_table.c.body))
            return {model: Policy.from_json(body) for model, body in rows}

    def set_policy(self, model: str, policy: Policy, *, actor: str) -> Policy:
        """Install ``policy`` (a split or a bandit) in place of whatever the model had.

        Every version in it must exist and be ``registered``. Canaries start through
        ``start_canary``. A bandit gets zeroed reward counts for its experiment.
        """
        _check_actor(actor)
        if policy.kind == "canary":
            raise InvalidArgument("start a canary with start_canary, not set_policy")
        with self._db.write() as s:
            _model_row(s, model)
            _check_versions(s, model, policy.versions())
            before = _policy(s, model)
            self._end_running_canary(s, model)
            _put_policy(s, model, policy, actor, self._clock())
            if policy.bandit is not None:
                _zero_counts(s, model, policy.experiment_id, policy.bandit.versions)
            self._event(s, actor, "policy.set", model, None, {
                "before": _json(before), "after": policy.to_json()})
            return policy

    def clear_policy(self, model: str, *, actor: str) -> Policy | None:
        """Remove the model's policy (100% production); returns the removed one."""
        _check_actor(actor)
        with self._db.write() as s:
            _model_row(s, model)
            before = self._remove_policy(s, model)
            self._event(s, actor, "policy.clear", model, None, {
                "before": _json(before), "after": None})
            return before

    def end_experiment(self, model: str, *, actor: str, reason: str) -> Policy | None:
        """End any running experiment (promote and rollback call this): the policy goes,
        so all traffic follows ``production``. Records ``experiment.end`` when there was
        a policy; returns it (None when there was nothing to end)."""
        _check_actor(actor)
        with self._db.write() as s:
            _model_row(s, model)
            before = self._remove_policy(s, model)
            if before is not None:
                self._event(s, actor, "experiment.end", model, None, {
                    "before": before.to_json(), "after": None, "reason": reason,
                    "experiment_id": before.experiment_id})
            return before

    def _remove_policy(self, s: Session, model: str) -> Policy | None:
        before = _policy(s, model)
        self._end_running_canary(s, model)
        s.execute(delete(traffic_policy_table).where(traffic_policy_table.c.model == model))
        return before

    def _end_running_canary(self, s: Session, model: str) -> None:
        c = canary_table.c
        s.execute(update(canary_table).where(c.model == model, c.status == "running").values(
            status="ended", reason="the policy was replaced or cleared",
            updated_at=self._clock(), revision=c.revision + 1))

    # ------------------------------------------------------------------ canary

    def start_canary(
        self, model: str, spec: CanarySpec, *, actor: str, now: datetime, sticky: bool = True,
        shadows: Iterable[Shadow] = (), experiment_id: str | None = None,
    ) -> CanaryState:
        """Start a ramp of ``spec.version`` against the current production version, at
        step 0, replacing any split or bandit policy.

        ``PreconditionError`` when the model has no production version, the candidate is
        production already, a canary is already running, or a version is not registered.
        """
        _check_actor(actor)
        with self._db.write() as s:
            _model_row(s, model)
            alias = s.get(AliasRow, (model, PRODUCTION))
            if alias is None:
                raise PreconditionError(f"model '{model}' has no production version to ramp from")
            policy = Policy.for_canary(alias.version, spec, sticky=sticky, shadows=shadows,
                                       experiment_id=experiment_id)
            _check_versions(s, model, policy.versions())
            existing = _canary(s, model)
            if existing is not None and existing.active:
                raise PreconditionError(
                    f"a canary of version {existing.version} of model '{model}' is "
                    f"{existing.status}; clear the policy first"
                )
            before = _policy(s, model)
            _put_policy(s, model, policy, actor, self._clock())
            values = {
                "experiment_id": policy.experiment_id, "version": spec.version,
                "champion": alias.version, "spec": spec.to_json(), "status": "running",
                "step_index": 0, "step_started_at": now, "started_at": now, "updated_at": now,
                "revision": 1 if existing is None else existing.revision + 1, "reason": "",
            }
            if existing is None:
                s.execute(insert(canary_table).values(model=model, **values))
            else:
                s.execute(update(canary_table).where(canary_table.c.model == model)
                          .values(**values))
            self._event(s, actor, "canary.start", model, spec.version, {
                "before": _json(before), "after": policy.to_json(), "champion": alias.version})
            return _required_canary(s, model)

    def get_canary(self, model: str) -> CanaryState | None:
        """The model's latest canary ramp (whatever its status), or None."""
        with self._db.read() as s:
            return _canary(s, model)

    def list_canaries(self, *, active_only: bool = False) -> list[CanaryState]:
        query = select(canary_table).order_by(canary_table.c.model)
        if active_only:
            query = query.where(canary_table.c.status.in_(ACTIVE_CANARY))
        with self._db.read() as s:
            return [_canary_state(row) for row in s.execute(query).mappings()]

    def advance_canary(
        self, state: CanaryState, *, now: datetime, actor: str,
        detail: Mapping[str, Any] | None = None,
    ) -> CanaryState:
        """Move a running canary to its next step and rewrite its policy's weights (same
        experiment id). Compare-and-set on ``state.revision``: ``ConflictError`` if the
        ramp changed since ``state`` was read."""
        _check_actor(actor)
        step = state.step_index + 1
        if step >= len(state.spec.steps):
            raise InvalidArgument(f"the canary of model '{state.model}' has no step {step}")
        with self._db.write() as s:
            self._transition(s, state, ("running",), status="running", step_index=step,
                             step_started_at=now, updated_at=now)
            before = _policy(s, state.model)
            if before is None or before.experiment_id != state.experiment_id:
                raise PreconditionError(
                    f"the policy of model '{state.model}' is not experiment {state.experiment_id}"
                )
            after = before.at_canary_step(step)
            _put_policy(s, state.model, after, actor, self._clock())
            self._event(s, actor, "canary.advance", state.model, state.version, {
                "before": before.to_json(), "after": after.to_json(),
                "from_share": state.share, "to_share": state.spec.steps[step], "step": step,
                "stats": dict(detail or {})})
            return _required_canary(s, state.model)

    def begin_promotion(self, state: CanaryState, *, now: datetime, actor: str) -> CanaryState:
        """Claim the promotion of a canary (``running``, or ``promoting`` left stale by a
        crashed controller): exactly one caller per ``state.revision`` gets the new state;
        the others get ``ConflictError``."""
        _check_actor(actor)
        with self._db.write() as s:
            self._transition(s, state, ACTIVE_CANARY, status="promoting", updated_at=now)
            self._event(s, actor, "canary.promoting", state.model, state.version, {
                "before": state.status, "after": "promoting",
                "experiment_id": state.experiment_id})
            return _required_canary(s, state.model)

    def finish_canary(
        self, state: CanaryState, status: str, *, now: datetime, actor: str, reason: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> CanaryState:
        """End a ramp as ``promoted`` or ``aborted`` (compare-and-set on the revision) and
        remove its policy if it is still installed, so traffic follows ``production``."""
        _check_actor(actor)
        if status not in _FINISHED:
            raise InvalidArgument(f"a canary finishes as one of {_FINISHED}, got {status!r}")
        with self._db.write() as s:
            self._transition(s, state, ACTIVE_CANARY, status=status, updated_at=now,
                             reason=reason)
            before = _policy(s, state.model)
            if before is not None and before.experiment_id == state.experiment_id:
                s.execute(delete(traffic_policy_table)
                          .where(traffic_policy_table.c.model == state.model))
            else:
                before = None
            self._event(s, actor, f"canary.{status}", state.model, state.version, {
                "before": _json(before), "after": None, "reason": reason,
                "experiment_id": state.experiment_id, "stats": dict(detail or {})})
            return _required_canary(s, state.model)

    def _transition(
        self, s: Session, state: CanaryState, allowed: Iterable[str], **values: Any
    ) -> None:
        c = canary_table.c
        result = s.execute(
            update(canary_table)
            .where(c.model == state.model, c.revision == state.revision,
                   c.status.in_(tuple(allowed)))
            .values(revision=c.revision + 1, **values)
        )
        if rowcount(result) != 1:
            raise ConflictError(
                f"the canary of model '{state.model}' changed since revision {state.revision}"
            )

    # ------------------------------------------------------------------ bandit

    def add_rewards(
        self, experiment_id: str, version: int, *, successes: int = 0, failures: int = 0
    ) -> bool:
        """Atomically add to one arm's reward counts; False if the experiment has no such
        arm (e.g. feedback arriving after the bandit was replaced)."""
        if successes < 0 or failures < 0:
            raise InvalidArgument(
                f"reward counts only grow, got successes={successes}, failures={failures}"
            )
        c = bandit_count_table.c
        # One UPDATE adding in place is atomic by itself: no need to queue behind the
        # registry's writers (PostgreSQL's advisory lock) for every reward.
        with self._db.write(exclusive=False) as s:
            result = s.execute(
                update(bandit_count_table)
                .where(c.experiment_id == experiment_id, c.version == version)
                .values(successes=c.successes + successes, failures=c.failures + failures)
            )
            return rowcount(result) > 0

    def record_reward(self, experiment_id: str, version: int, reward: bool) -> bool:
        """Count one binary reward (see ``add_rewards``)."""
        return self.add_rewards(experiment_id, version, successes=int(reward),
                                failures=int(not reward))

    def bandit_counts(self, experiment_id: str) -> dict[int, RewardCounts]:
        """A snapshot of every arm's counts; rebuild the routing table from it."""
        c = bandit_count_table.c
        with self._db.read() as s:
            rows = s.execute(select(c.version, c.successes, c.failures)
                             .where(c.experiment_id == experiment_id))
            return {v: RewardCounts(int(ok), int(bad)) for v, ok, bad in rows}

    # ------------------------------------------------------------------ events

    def _event(
        self, s: Session, actor: str, action: str, model: str, version: int | None,
        detail: dict[str, Any],
    ) -> None:
        s.add(EventRow(time=self._clock(), actor=actor, action=action, model=model,
                       version=version, detail=detail))
        s.flush()


# ------------------------------------------------------------------- rows


def _model_row(s: Session, model: str) -> ModelRow:
    row = s.get(ModelRow, model)
    if row is None:
        raise ModelNotFound(model)
    return row


def _check_versions(s: Session, model: str, versions: Iterable[int]) -> None:
    wanted = sorted(set(versions))
    rows = s.execute(select(VersionRow.version, VersionRow.status).where(
        VersionRow.model == model, VersionRow.version.in_(wanted)))
    status = dict(rows.tuples().all())
    for version in wanted:
        if version not in status:
            raise VersionNotFound(model, version)
        if status[version] != "registered":
            raise PreconditionError(
                f"version {version} of model '{model}' is {status[version]}; only "
                "registered versions can take traffic"
            )


def _policy(s: Session, model: str) -> Policy | None:
    body = s.scalar(select(traffic_policy_table.c.body)
                    .where(traffic_policy_table.c.model == model))
    return None if body is None else Policy.from_json(body)


def _put_policy(s: Session, model: str, policy: Policy, actor: str, now: datetime) -> None:
    values = {"experiment_id": policy.experiment_id, "kind": policy.kind,
              "body": policy.to_json(), "updated_at": now, "actor": actor}
    t = traffic_policy_table
    if rowcount(s.execute(update(t).where(t.c.model == model).values(**values))) == 0:
        s.execute(insert(t).values(model=model, **values))


def _zero_counts(s: Session, model: str, experiment_id: str, versions: Iterable[int]) -> None:
    c = bandit_count_table.c
    have = set(s.scalars(select(c.version).where(c.experiment_id == experiment_id)))
    rows = [{"experiment_id": experiment_id, "version": v, "model": model, "successes": 0,
             "failures": 0} for v in versions if v not in have]
    if rows:
        s.execute(insert(bandit_count_table), rows)


def _canary(s: Session, model: str) -> CanaryState | None:
    row = s.execute(select(canary_table).where(canary_table.c.model == model)).mappings().first()
    return None if row is None else _canary_state(row)


def _required_canary(s: Session, model: str) -> CanaryState:
    state = _canary(s, model)
    if state is None:  # the row was written in this very transaction
        raise RuntimeError(f"canary row of model '{model}' vanished inside its transaction")
    return state


def _canary_state(row: RowMapping) -> CanaryState:
    return CanaryState(
        model=row["model"], experiment_id=row["experiment_id"], version=row["version"],
        champion=row["champion"], spec=CanarySpec.from_json(row["spec"]), status=row["status"],
        step_index=row["step_index"], step_started_at=row["step_started_at"],
        started_at=row["started_at"], updated_at=row["updated_at"], revision=row["revision"],
        reason=row["reason"],
    )



def _json(policy: Policy | None) -> dict[str, Any] | None:
    return None if policy is None else policy.to_json()


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor or len(actor) > 128:
        raise InvalidArgument(
            f"actor must be a non-empty string of at most 128 chars, got {actor!r}"
        )
