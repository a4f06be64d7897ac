"""The traffic facade of the admin service: read and change a model's routing policy.

Writes go through the model manager (versions loaded and warmed before the policy is
stored and routed) or the canary controller (whose ramp the manager follows through
``sync_policies``, called right after the start for immediacy). Reads combine the routing
table, this process's per-arm counters, the shadow runner's agreement counts and live
quality from the request log (read in the DB executor).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.arm_stats import ArmStatsBook
from gateway.model_manager import ModelManager
from gateway.shadow import ShadowRunner
from lifecycle.canary import ArmStats, ArmStatsSource, CanaryController
from lifecycle.policies import PolicyStore
from lifecycle.traffic import BanditSpec, CanarySpec, CanaryState, Policy, Shadow

__all__ = ["ArmReport", "TrafficService", "TrafficStatus"]

QUALITY_WINDOW = timedelta(days=1)
"""How far back live quality of a split or bandit is read (a canary: its current step)."""


@dataclass(frozen=True)
class ArmReport:
    version: int
    arm: str
    weight: float = 0.0
    requests: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    shadow: bool = False
    mirrored: int = 0
    dropped: int = 0
    shadow_failed: int = 0
    agreement: float | None = None
    labelled: int = 0
    quality: float | None = None


@dataclass(frozen=True)
class TrafficStatus:
    model: str
    policy: Policy | None
    production: int | None
    serving_set: tuple[int, ...]
    canary: CanaryState | None
    arms: tuple[ArmReport, ...]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TrafficService:
    """Awaited on the serving loop (the model manager's). ``live`` (optional) gives live
    quality per arm; it blocks, so it runs in ``db_executor``."""

    def __init__(
        self, *, manager: ModelManager, policies: PolicyStore, canary: CanaryController,
        arm_stats: ArmStatsBook, shadows: ShadowRunner | None, live: ArmStatsSource | None,
        db_executor: Executor, clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._manager = manager
        self._policies = policies
        self._canary = canary
        self._arm_stats = arm_stats
        self._shadows = shadows
        self._live = live
        self._db = db_executor
        self._clock = clock

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def status(self, model: str) -> TrafficStatus:
        """Raises ``ModelNotFound`` for an unknown model."""
        served = self._manager.get(model)
        table, policy = served.table, served.policy
        canary = await self._run(self._policies.get_canary, model)
        assert canary is None or isinstance(canary, CanaryState)
        live: Mapping[int, ArmStats] = {}
        if policy is not None and self._live is not None:
            since = (canary.step_started_at if canary is not None and canary.active
                     and canary.experiment_id == policy.experiment_id
                     else self._clock() - QUALITY_WINDOW)
            result = await self._run(self._live.arm_stats, model, policy.experiment_id, since)
            assert isinstance(result, Mapping)
            live = result
        experiment = policy.experiment_id if policy is not None else ""
        counters = self._arm_stats.snapshot(model, experiment)
        weights = dict(table.weights) if table is not None else {}
        arms: list[ArmReport] = []
        names = ({a.version: a.name for a in policy.arms} if policy is not None
                 else ({served.production.version: "production"}
                       if served.production is not None else {}))
        for version, name in names.items():
            counter = counters.get(version)
            quality = live.get(version)
            arms.append(ArmReport(
                version=version, arm=name, weight=weights.get(version, 0.0),
                requests=counter.requests if counter else 0,
                errors=counter.errors if counter else 0,
                p50_ms=counter.percentile_ms(0.5) if counter else 0.0,
                p99_ms=counter.percentile_ms(0.99) if counter else 0.0,
                labelled=quality.labelled if quality else 0,
                quality=quality.quality if quality else None,
            ))
        for shadow in policy.shadows if policy is not None else ():
            stats = self._shadows.stats_for(model, shadow.version) if self._shadows else None
            arms.append(ArmReport(
                version=shadow.version, arm="shadow", weight=shadow.fraction, shadow=True,
                mirrored=stats.mirrored if stats else 0, dropped=stats.dropped if stats else 0,
                shadow_failed=stats.failed if stats else 0,
                agreement=stats.agreement if stats else None,
            ))
        return TrafficStatus(
            model=model, policy=policy,
            production=served.production.version if served.production else None,
            serving_set=tuple(sorted(table.serving_set)) if table is not None else (),
            canary=canary, arms=tuple(arms))

    async def set_split(self, model: str, weights: Mapping[int, float], *, sticky: bool,
                        shadows: tuple[Shadow, ...], actor: str) -> TrafficStatus:
        """A new split experiment; ``InvalidArgument`` for bad weights or fractions."""
        policy = Policy.split(weights, sticky=sticky, shadows=shadows)
        await self._manager.apply_policy(model, policy, actor=actor)
        return await self.status(model)

    async def clear(self, model: str, *, actor: str) -> TrafficStatus:
        await self._manager.apply_policy(model, None, actor=actor)
        return await self.status(model)

    async def start_canary(self, model: str, spec: CanarySpec, *, sticky: bool,
                           shadows: tuple[Shadow, ...], actor: str) -> TrafficStatus:
        """Warm the candidate (and shadows) first, then start the ramp in the database and
        route it at once; the controller's ticks move it on."""
        await self._manager.prepare(model, {spec.version} | {s.version for s in shadows})
        await self._canary.start(model, spec, actor=actor, now=self._clock(), sticky=sticky,
                                 shadows=shadows)
        await self._manager.sync_policies()
        return await self.status(model)

    async def start_bandit(self, model: str, spec: BanditSpec, *, sticky: bool,
                           actor: str) -> TrafficStatus:
        policy = Policy.for_bandit(spec, sticky=sticky)
        await self._manager.apply_policy(model, policy, actor=actor)
        return await self.status(model)
