"""The canary controller: ramps a candidate version step by step while guards hold.

State lives in the database (``PolicyStore``), so any number of controllers — one per
worker or replica — can tick the same ramps: every transition is a compare-and-set on the
ramp's revision, so a step advances once and a promotion happens once.

One tick of a ``running`` ramp, over the requests of the current step (since
``step_started_at``):

1. fewer than ``min_requests`` candidate requests → hold;
2. a guard fails (error rate or p99 against the champion; live quality once both arms
   have ``min_labels`` labels) → abort: the policy goes (100% production, the alias does
   not move) and the version is marked ``rejected`` with the reason;
3. no champion traffic to compare with, or the step younger than ``min_seconds`` → hold;
4. otherwise advance to the next step, or — past the last step, or on reaching 100% —
   promote through the ``Promoter`` (the gateway's model manager) and end the ramp.

A ``promoting`` ramp whose controller died is claimed again after ``promotion_timeout_s``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from lifecycle.errors import ConflictError, LifecycleError
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.traffic import CanarySpec, CanaryState, Shadow

__all__ = [
    "ArmStats",
    "ArmStatsSource",
    "CanaryController",
    "Decision",
    "Promoter",
    "TickOutcome",
    "decide",
]

log = logging.getLogger("lifecycle.canary")
T = TypeVar("T")


@dataclass(frozen=True)
class ArmStats:
    """What one version served in a window: primary (non-shadow) requests, failed ones,
    latency p99 in milliseconds (0 if unknown), labelled requests and their live quality
    (higher is better; None without labels)."""

    requests: int = 0
    errors: int = 0
    p99_ms: float = 0.0
    labelled: int = 0
    quality: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "p99_ms": self.p99_ms,
                "labelled": self.labelled, "quality": self.quality}


class ArmStatsSource(Protocol):
    def arm_stats(
        self, model: str, experiment_id: str, since: datetime
    ) -> Mapping[int, ArmStats]:
        """Stats by served version of the primary requests of ``experiment_id`` received
        at or after ``since`` (pinned requests excluded); versions without requests may be
        missing. Called from the controller's executor; may block."""
        ...


class Promoter(Protocol):
    """The narrow part of ``lifecycle.deployer.Deployer`` the controller needs."""

    async def promote(self, model: str, version: int, *, actor: str) -> int | None:
        """Load and warm ``version``, move ``production`` to it; raise if it cannot."""
        ...


@dataclass(frozen=True)
class Decision:
    """``action`` is ``hold``, ``advance``, ``promote`` or ``abort``."""

    action: str
    reason: str


@dataclass(frozen=True)
class TickOutcome:
    """What a tick did to one ramp: ``action`` is a ``Decision`` action, ``promoted``,
    ``aborted`` (also when the promotion failed) or ``lost`` (another controller moved
    the ramp first). ``state`` is the ramp after the tick."""

    model: str
    version: int
    action: str
    reason: str
    state: CanaryState


def decide(state: CanaryState, stats: Mapping[int, ArmStats], now: datetime) -> Decision:
    """The next move of a running ramp from its current step's stats (pure)."""
    spec, guards = state.spec, state.spec.guards
    cand = stats.get(state.version, ArmStats())
    champ = stats.get(state.champion, ArmStats())
    if cand.requests < spec.min_requests:
        return Decision("hold", f"{cand.requests}/{spec.min_requests} candidate requests")
    if champ.requests:
        delta = cand.error_rate - champ.error_rate
        if delta > guards.max_error_rate_delta:
            return Decision("abort", (
                f"error rate {cand.error_rate:.4f} vs champion {champ.error_rate:.4f} "
                f"(max delta {guards.max_error_rate_delta:g}) at {state.share:g}%"))
        limit = champ.p99_ms * guards.max_p99_ratio + guards.p99_slack_ms
        if champ.p99_ms > 0 and cand.p99_ms > limit:
            return Decision("abort", (
                f"p99 {cand.p99_ms:.2f} ms vs champion {champ.p99_ms:.2f} ms "
                f"(max {guards.max_p99_ratio:g}x + {guards.p99_slack_ms:g} ms) "
                f"at {state.share:g}%"))
    if (
        min(cand.labelled, champ.labelled) >= max(guards.min_labels, 1)
        and cand.quality is not None and champ.quality is not None
        and champ.quality - cand.quality > guards.max_quality_drop
    ):
        return Decision("abort", (
            f"live quality {cand.quality:.4f} vs champion {champ.quality:.4f} "
            f"(max drop {guards.max_quality_drop:g}, {cand.labelled} labels) "
            f"at {state.share:g}%"))
    if not champ.requests:
        return Decision("hold", "no champion requests to compare with")
    held = (now - state.step_started_at).total_seconds()
    if held < spec.min_seconds:
        return Decision("hold", f"step held {held:.0f}/{spec.min_seconds:g} s")
    following = state.step_index + 1
    if following >= len(spec.steps) or spec.steps[following] >= 100:
        return Decision("promote", f"every step passed up to {state.share:g}%")
    return Decision("advance", f"step {state.share:g}% passed")


class CanaryController:
    """Starts ramps and moves them forward on ``tick``; see the module docstring.

    Blocking work (database, stats) runs in ``executor`` (the loop's default if None);
    ``tick`` must be awaited on the loop that owns the ``Promoter``.
    """

    def __init__(
        self,
        store: PolicyStore,
        registry: Registry,
        stats: ArmStatsSource,
        promoter: Promoter,
        *,
        actor: str = "canary",
        executor: Executor | None = None,
        promotion_timeout_s: float = 600.0,
    ) -> None:
        self._store = store
        self._registry = registry
        self._stats = stats
        self._promoter = promoter
        self._actor = actor
        self._executor = executor
        self._promotion_timeout_s = promotion_timeout_s

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def start(
        self, model: str, spec: CanarySpec, *, actor: str, now: datetime, sticky: bool = True,
        shadows: Iterable[Shadow] = (),
    ) -> CanaryState:
        """Start a ramp (see ``PolicyStore.start_canary``); the serving side applies the
        new policy once the candidate is loaded."""
        return await self._run(self._store.start_canary, model, spec, actor=actor, now=now,
                               sticky=sticky, shadows=tuple(shadows))

    async def tick(self, now: datetime) -> list[TickOutcome]:
        """Move every active ramp forward once (``now``: timezone-aware UTC). One ramp's
        failure (storage, stats source) does not stop the rest: it is logged and the ramp
        is retried next tick. Listing the ramps may raise ``StorageUnavailable``."""
        outcomes = []
        for state in await self._run(self._store.list_canaries, active_only=True):
            try:
                outcomes.append(await self.tick_one(state, now))
            except Exception as exc:
                log.error("canary tick failed", exc_info=not isinstance(exc, LifecycleError),
                          extra={"event": "canary_tick_failed", "model": state.model,
                                 "version": state.version, "reason": str(exc)})
        return outcomes

    async def tick_one(self, state: CanaryState, now: datetime) -> TickOutcome:
        """One step of one ramp read at ``state``; raises what the store or the stats
        source raise (except a lost compare-and-set, reported as ``lost``)."""
        if state.status == "promoting":
            stale = (now - state.updated_at).total_seconds() >= self._promotion_timeout_s
            if not stale:
                return TickOutcome(state.model, state.version, "hold",
                                   "promotion in progress", state)
            return await self._promote(state, now, "retrying a stale promotion", {})
        stats = await self._run(self._stats.arm_stats, state.model, state.experiment_id,
                                state.step_started_at)
        decision = decide(state, stats, now)
        detail = {str(v): s.to_json() for v, s in stats.items()}
        if decision.action == "hold":
            return TickOutcome(state.model, state.version, "hold", decision.reason, state)
        if decision.action == "abort":
            return await self._abort(state, now, decision.reason, detail)
        if decision.action == "promote":
            return await self._promote(state, now, decision.reason, detail)
        try:
            advanced = await self._run(self._store.advance_canary, state, now=now,
                                       actor=self._actor, detail=detail)
        except ConflictError:
            return await self._lost(state, "another controller moved the ramp")
        log.info("canary advanced", extra={
            "event": "canary_advanced", "model": state.model, "version": state.version,
            "share": advanced.share})
        return TickOutcome(state.model, state.version, "advance", decision.reason, advanced)

    async def _abort(
        self, state: CanaryState, now: datetime, reason: str, detail: Mapping[str, Any]
    ) -> TickOutcome:
        try:
            aborted = await self._run(self._store.finish_canary, state, "aborted", now=now,
                                      actor=self._actor, reason=reason, detail=detail)
        except ConflictError:
            return await self._lost(state, "another controller moved the ramp")
        try:
            await self._run(self._registry.set_status, state.model, state.version, "rejected",
                            actor=self._actor, reason=f"canary aborted: {reason}")
        except LifecycleError as exc:
            # E.g. an operator promoted it meanwhile: the ramp is over either way.
            log.warning("canary version not rejected", extra={
                "event": "canary_reject_failed", "model": state.model,
                "version": state.version, "reason": str(exc)})
        log.warning("canary aborted", extra={
            "event": "canary_aborted", "model": state.model, "version": state.version,
            "reason": reason})
        return TickOutcome(state.model, state.version, "aborted", reason, aborted)

    async def _promote(
        self, state: CanaryState, now: datetime, reason: str, detail: Mapping[str, Any]
    ) -> TickOutcome:
        try:
            claimed = await self._run(self._store.begin_promotion, state, now=now,
                                      actor=self._actor)
        except ConflictError:
            return await self._lost(state, "another controller is promoting")
        try:
            await self._promoter.promote(state.model, state.version, actor=self._actor)
        except Exception as exc:
            why = f"promotion failed: {exc}"
            try:
                failed = await self._run(self._store.finish_canary, claimed, "aborted",
                                         now=now, actor=self._actor, reason=why, detail=detail)
            except ConflictError:
                return await self._lost(claimed, "another controller finished the ramp")
            log.error("canary promotion failed", extra={
                "event": "canary_promotion_failed", "model": state.model,
                "version": state.version, "reason": str(exc)})
            return TickOutcome(state.model, state.version, "aborted", why, failed)
        try:
            done = await self._run(self._store.finish_canary, claimed, "promoted", now=now,
                                   actor=self._actor, reason=reason, detail=detail)
        except ConflictError:
            return await self._lost(claimed, "another controller finished the ramp")
        log.info("canary promoted", extra={
            "event": "canary_promoted", "model": state.model, "version": state.version})
        return TickOutcome(state.model, state.version, "promoted", reason, done)

    async def _lost(self, state: CanaryState, reason: str) -> TickOutcome:
        current = await self._run(self._store.get_canary, state.model)
        return TickOutcome(state.model, state.version, "lost", reason, current or state)
