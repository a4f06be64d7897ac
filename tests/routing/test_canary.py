"""The canary controller: it advances on good stats, aborts on a worse version, and
promotes once however many controllers tick the same ramp."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta

import pytest

from lifecycle.canary import ArmStats, CanaryController, decide
from lifecycle.db import Database, make_engine
from lifecycle.domain import PRODUCTION
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.traffic import CanaryGuards, CanarySpec, CanaryState
from tests.routing.conftest import START

GOOD = ArmStats(requests=200, errors=1, p99_ms=10.0, labelled=100, quality=0.90)
SPEC = CanarySpec(2, steps=(5, 25, 50, 100), min_requests=100, min_seconds=30,
                  guards=CanaryGuards(min_labels=50))


class ScriptedStats:
    """An ``ArmStatsSource`` answering what the test sets, recording each window asked for.
    With ``barrier`` set, every call waits for the other controllers' calls first."""

    def __init__(self, stats: Mapping[int, ArmStats]) -> None:
        self.stats = dict(stats)
        self.windows: list[datetime] = []
        self.barrier: threading.Barrier | None = None

    def arm_stats(self, model: str, experiment_id: str, since: datetime) -> Mapping[int, ArmStats]:
        self.windows.append(since)
        if self.barrier is not None:
            self.barrier.wait(timeout=30)
        return dict(self.stats)


class AliasPromoter:
    """A ``Promoter`` doing what the gateway's promotion does to the database: move the
    alias, end the experiment. ``fail`` makes it raise like a failed load."""

    def __init__(self, registry: Registry, store: PolicyStore) -> None:
        self.registry = registry
        self.store = store
        self.calls: list[tuple[str, int]] = []
        self.fail = False
        self._lock = threading.Lock()

    async def promote(self, model: str, version: int, *, actor: str) -> int | None:
        with self._lock:
            self.calls.append((model, version))
        if self.fail:
            raise RuntimeError("version 2 failed to warm up")
        change = self.registry.set_alias(model, PRODUCTION, version, actor=actor)
        self.store.end_experiment(model, actor=actor, reason=f"promoted {version}")
        return change.previous


@pytest.fixture
def stats() -> ScriptedStats:
    return ScriptedStats({1: GOOD, 2: GOOD})


@pytest.fixture
def promoter(registry: Registry, store: PolicyStore) -> AliasPromoter:
    return AliasPromoter(registry, store)


@pytest.fixture
def controller(
    store: PolicyStore, registry: Registry, stats: ScriptedStats, promoter: AliasPromoter
) -> CanaryController:
    return CanaryController(store, registry, stats, promoter)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def test_a_healthy_canary_walks_every_step_then_promotes_once(
    controller: CanaryController, store: PolicyStore, registry: Registry,
    stats: ScriptedStats, promoter: AliasPromoter, model: str,
) -> None:
    state = asyncio.run(controller.start(model, SPEC, actor="alice", now=at(0)))
    experiment = state.experiment_id

    def tick(seconds: float) -> str:
        (outcome,) = asyncio.run(controller.tick(at(seconds)))
        return outcome.action

    assert tick(10) == "hold"  # enough requests, not enough time
    assert tick(31) == "advance"
    assert stats.windows[-1] == at(0)
    policy = store.get_policy(model)
    assert policy is not None and policy.weights() == {2: 25.0, 1: 75.0}
    assert policy.experiment_id == experiment
    assert tick(40) == "hold"  # the new step's clock started at 31
    assert stats.windows[-1] == at(31)
    assert tick(62) == "advance"
    assert tick(93) == "promoted"  # 50% passed and the next step is 100%
    assert promoter.calls == [(model, 2)]
    assert asyncio.run(controller.tick(at(200))) == []
    assert promoter.calls == [(model, 2)]
    assert registry.get_alias(model, PRODUCTION) == 2
    assert store.get_policy(model) is None
    final = store.get_canary(model)
    assert final is not None and final.status == "promoted"
    actions = [e.action for e in reversed(registry.list_events(model=model, limit=8))]
    assert actions[-7:] == ["canary.start", "canary.advance", "canary.advance",
                            "canary.promoting", "alias.set", "experiment.end",
                            "canary.promoted"]


def test_a_step_waits_for_enough_candidate_requests(
    controller: CanaryController, stats: ScriptedStats, model: str
) -> None:
    asyncio.run(controller.start(model, SPEC, actor="alice", now=at(0)))
    stats.stats[2] = ArmStats(requests=99, p99_ms=10.0)
    (outcome,) = asyncio.run(controller.tick(at(3600)))
    assert (outcome.action, outcome.reason) == ("hold", "99/100 candidate requests")


@pytest.mark.parametrize(
    "candidate, reason",
    [
        (ArmStats(requests=200, errors=20, p99_ms=10.0), "error rate 0.1000"),
        (ArmStats(requests=200, errors=1, p99_ms=40.0), "p99 40.00 ms"),
        (ArmStats(requests=200, errors=1, p99_ms=10.0, labelled=60, quality=0.70),
         "live quality 0.7000"),
    ],
)
def test_a_worse_canary_aborts_by_itself(
    controller: CanaryController, store: PolicyStore, registry: Registry,
    stats: ScriptedStats, promoter: AliasPromoter, model: str, candidate: ArmStats,
    reason: str,
) -> None:
    asyncio.run(controller.start(model, SPEC, actor="alice", now=at(0)))
    stats.stats[2] = candidate
    # Guards act as soon as the step has its requests, without waiting for the time.
    (outcome,) = asyncio.run(controller.tick(at(1)))
    assert outcome.action == "aborted" and reason in outcome.reason
    assert store.get_policy(model) is None  # back to 100% production
    assert registry.get_alias(model, PRODUCTION) == 1  # the alias did not move
    version = registry.get_version(model, 2)
    assert version.status == "rejected"
    (event,) = registry.list_events(model=model, action="version.status")
    assert reason in event.detail["reason"] and event.detail["after"] == "rejected"
    (aborted,) = registry.list_events(model=model, action="canary.aborted")
    assert reason in aborted.detail["reason"]
    assert promoter.calls == []
    state = store.get_canary(model)
    assert state is not None and state.status == "aborted" and reason in state.reason


def test_quality_is_judged_only_with_enough_labels() -> None:
    few = ArmStats(requests=200, errors=1, p99_ms=10.0, labelled=49, quality=0.10)
    assert decide(_running_state(), {1: GOOD, 2: few}, at(31)).action == "advance"
    enough = ArmStats(requests=200, errors=1, p99_ms=10.0, labelled=50, quality=0.10)
    assert decide(_running_state(), {1: GOOD, 2: enough}, at(31)).action == "abort"


def test_no_champion_traffic_holds_the_step() -> None:
    decision = decide(_running_state(), {2: GOOD}, at(31))
    assert (decision.action, decision.reason) == ("hold", "no champion requests to compare with")


def test_a_failed_promotion_aborts_without_rejecting(
    controller: CanaryController, store: PolicyStore, registry: Registry,
    promoter: AliasPromoter, model: str,
) -> None:
    spec = CanarySpec(2, steps=(50,), min_requests=100, min_seconds=0)
    asyncio.run(controller.start(model, spec, actor="alice", now=at(0)))
    promoter.fail = True
    (outcome,) = asyncio.run(controller.tick(at(1)))
    assert outcome.action == "aborted" and "failed to warm up" in outcome.reason
    assert store.get_policy(model) is None
    assert registry.get_alias(model, PRODUCTION) == 1
    assert registry.get_version(model, 2).status == "registered"


def test_a_stale_promotion_is_claimed_again(
    controller: CanaryController, store: PolicyStore, promoter: AliasPromoter, model: str
) -> None:
    state = asyncio.run(controller.start(model, SPEC, actor="alice", now=at(0)))
    store.begin_promotion(state, now=at(5), actor="crashed")
    (outcome,) = asyncio.run(controller.tick(at(60)))
    assert outcome.action == "hold" and promoter.calls == []
    (outcome,) = asyncio.run(controller.tick(at(5 + 600)))
    assert outcome.action == "promoted" and promoter.calls == [(model, 2)]


def test_two_controllers_on_one_ramp_advance_once_and_promote_once(
    store: PolicyStore, registry: Registry, promoter: AliasPromoter, model: str,
    db_url: str,
) -> None:
    spec = CanarySpec(2, steps=(5, 50), min_requests=100, min_seconds=30)
    store.start_canary(model, spec, actor="alice", now=at(0))
    stats = ScriptedStats({1: GOOD, 2: GOOD})
    # Each controller has its own Database, as two replicas would.
    other = Database(make_engine(db_url))
    try:
        controllers = [
            CanaryController(store, registry, stats, promoter),
            CanaryController(PolicyStore(other), Registry(other), stats, promoter),
        ]

        def tick_together(seconds: float) -> list[str]:
            # Both read the ramp and its stats before either acts on it.
            stats.barrier = threading.Barrier(len(controllers))
            results: list[str] = []

            def run(c: CanaryController) -> None:
                results.extend(o.action for o in asyncio.run(c.tick(at(seconds))))

            threads = [threading.Thread(target=run, args=(c,)) for c in controllers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            return sorted(results)

        assert tick_together(31) == ["advance", "lost"]
        state = store.get_canary(model)
        assert state is not None and state.step_index == 1
        assert tick_together(62) == ["lost", "promoted"]
    finally:
        other.close()
    assert promoter.calls == [(model, 2)]
    assert registry.get_alias(model, PRODUCTION) == 2
    assert len(registry.list_events(model=model, action="canary.advance")) == 1
    assert len(registry.list_events(model=model, action="canary.promoted")) == 1


def _running_state() -> CanaryState:
    return CanaryState(
        model="fraud", experiment_id="exp", version=2, champion=1, spec=SPEC, status="running",
        step_index=0, step_started_at=at(0), started_at=at(0), updated_at=at(0), revision=1,
    )


class FlakyStats(ScriptedStats):
    """Fails its first call, as a stats query hitting a broken connection would."""

    def __init__(self, stats: Mapping[int, ArmStats]) -> None:
        super().__init__(stats)
        self.failed = False

    def arm_stats(self, model: str, experiment_id: str, since: datetime) -> Mapping[int, ArmStats]:
        if not self.failed:
            self.failed = True
            raise ConnectionError("stats source unavailable")
        return super().arm_stats(model, experiment_id, since)


def test_a_failing_tick_is_logged_and_the_ramp_retried(
    store: PolicyStore, registry: Registry, promoter: AliasPromoter, model: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller = CanaryController(store, registry, FlakyStats({1: GOOD, 2: GOOD}), promoter)
    asyncio.run(controller.start(model, SPEC, actor="alice", now=at(0)))
    assert asyncio.run(controller.tick(at(31))) == []
    assert "canary tick failed" in caplog.text
    (outcome,) = asyncio.run(controller.tick(at(32)))
    assert outcome.action == "advance"
