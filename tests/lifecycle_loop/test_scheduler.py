"""The scheduler: triggers start runs with their reason, one run per model at a time,
jobs rebuilt from the tables (and after a restart), crashes contained, upkeep jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle.db import Database, make_engine
from lifecycle.domain import PRODUCTION
from lifecycle.errors import PreconditionError
from lifecycle.loop_config import LifecycleConfig, TriggerSpec
from lifecycle.loop_errors import LifecycleNotConfigured, RunInProgress
from lifecycle.runs import RunStore
from lifecycle.scheduler import LifecycleScheduler
from lifecycle.synthetic import FraudGenerator
from lifecycle.triggers import register_bootstrap_dataset
from tests.lifecycle_loop.conftest import TEST_ESTIMATORS, Loop
from tests.lifecycle_loop.estimators import CRASH_FLAG_ENV, SLEEP_ENV
from tests.lifecycle_loop.helpers import MODEL, log_traffic
from tests.lifecycle_loop.test_failures import training_children
from tests.lifecycle_loop.test_pipeline import config, log_shifted
from tests.support.waiting import wait_until

Make = Callable[..., LifecycleScheduler]


@pytest.fixture
def make(loop: Loop) -> Iterator[Make]:
    made: list[LifecycleScheduler] = []

    def build(cfg: LifecycleConfig | None = None, **kwargs: Any) -> LifecycleScheduler:
        scheduler = LifecycleScheduler(
            retrainer=loop.retrainer, runs=loop.runs, triggers=loop.triggers,
            checker=loop.checker, requests=loop.requests,
            configs={MODEL: cfg or config()}, clock=loop.clock, poll_s=0.2, **kwargs)
        made.append(scheduler)
        return scheduler

    yield build
    for scheduler in made:
        scheduler.stop()


def triggers(*specs: dict[str, Any]) -> list[dict[str, Any]]:
    return list(specs)


def test_a_manual_run_holds_the_models_slot_until_it_ends(
    loop: Loop, make: Make, db_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "120")
    log_shifted(loop, n=400)
    scheduler = make(config(estimator=f"{TEST_ESTIMATORS}SleepingClassifier"))
    scheduler.start()
    run_id = scheduler.run_now(MODEL, reason="operator asked", actor="alice")

    wait_until(lambda: (loop.runs.get(run_id).step("train") or None))
    running = loop.runs.get(run_id)
    assert (running.status, running.trigger, running.reason, running.actor) == (
        "running", "manual", "operator asked", "alice")
    assert running.params["config"]["estimator"].endswith("SleepingClassifier")
    with pytest.raises(RunInProgress, match=f"run {run_id}"):
        scheduler.run_now(MODEL)
    # Another process on the same database file is refused too.
    other = Database(make_engine(db_url))
    try:
        with pytest.raises(RunInProgress):
            RunStore(other).create(MODEL, trigger="manual", reason="again", actor="bob")
    finally:
        other.close()

    scheduler.stop()
    stopped = loop.runs.get(run_id)
    assert stopped.status == "failed"
    assert stopped.error == "train: cancelled while training: the scheduler is stopping"
    assert training_children() == []
    assert [r.id for r in loop.runs.list(MODEL)] == [run_id]


def test_a_crashing_trainer_fails_its_run_and_the_next_run_still_works(
    loop: Loop, make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    flag = tmp_path / "crash"
    flag.touch()
    monkeypatch.setenv(CRASH_FLAG_ENV, str(flag))
    log_shifted(loop, n=600)
    scheduler = make(config(estimator=f"{TEST_ESTIMATORS}CrashingLogisticRegression"))
    scheduler.start()

    crashed = scheduler.wait(scheduler.run_now(MODEL), timeout_s=60)
    assert crashed.status == "failed"
    assert crashed.error.startswith(
        "train: the training process died without a result (exit code 3)")
    assert [v.version for v in loop.registry.list_versions(MODEL)] == [1]

    flag.unlink()
    healthy = scheduler.wait(scheduler.run_now(MODEL, reason="again"), timeout_s=60)
    assert healthy.status == "succeeded", healthy.error
    assert healthy.outcome == "registered"  # deploy policy manual
    assert loop.registry.get_version(MODEL, 2).status == "registered"
    assert loop.registry.get_alias(MODEL, PRODUCTION) == 1


def test_an_interval_trigger_starts_runs_with_its_reason(loop: Loop, make: Make) -> None:
    scheduler = make(LifecycleConfig.from_dict({
        "triggers": triggers({"kind": "interval", "seconds": 0.3})}))
    scheduler.start()

    runs = wait_until(lambda: [r for r in loop.runs.list(MODEL) if not r.active][:2]
                      if len(loop.runs.list(MODEL, status="failed")) >= 2 else None)
    for run in runs:
        assert (run.trigger, run.reason, run.actor) == ("interval", "interval every 0.3 s",
                                                        "scheduler")
        # Nothing was logged, so each run stops at its snapshot.
        assert run.error == "snapshot: the dataset is empty: no labelled rows in the window"


def test_a_drift_trigger_job_starts_a_run_once_the_inputs_shift(
    loop: Loop, make: Make,
) -> None:
    assert register_bootstrap_dataset(loop.registry, loop.datasets, MODEL) is not None
    X, _ = FraudGenerator(30).sample(300)
    log_traffic(loop.requests, X, None, end_us=loop.clock.us() - 700_000_000)
    scheduler = make(LifecycleConfig.from_dict({"triggers": triggers(
        {"kind": "drift", "metric": "psi", "threshold": 0.2, "share": 0.3, "window_s": 600,
         "min_rows": 200, "check_every_s": 0.2})}))
    scheduler.start()
    (spec, quiet, started), = scheduler.check_now(MODEL)
    assert spec.kind == "drift" and not quiet.fire and started is None

    X, _ = FraudGenerator(31, input_shift=1.0).sample(300)
    log_traffic(loop.requests, X, None, end_us=loop.clock.us())
    run = wait_until(lambda: loop.runs.last(MODEL))
    assert run.trigger == "drift" and run.actor == "scheduler"
    assert run.reason.startswith("drift: psi > 0.2 on ")
    assert run.reason.endswith("vs training dataset 1 of version 1")
    detail = run.params["trigger_detail"]
    assert detail["trigger"]["kind"] == "drift" and detail["report"]["share"] >= 0.3
    finished = scheduler.wait(run.id, timeout_s=30)
    assert finished.status == "failed"  # unlabelled traffic: nothing to train on
    # The cooldown keeps the trigger quiet after its run.
    (_, decision, _), = scheduler.check_now(MODEL)
    assert not decision.fire and decision.reason == f"cooling down after run {run.id}"
    assert len(loop.runs.list(MODEL)) == 1


def test_schedules_are_rebuilt_from_the_tables_after_a_restart(
    loop: Loop, make: Make,
) -> None:
    loop.triggers.set(MODEL, [TriggerSpec.from_json(t) for t in triggers(
        {"kind": "interval", "seconds": 3600}, {"kind": "cron", "cron": "0 3 * * *"},
        {"kind": "new_labels", "min_labels": 500, "check_every_s": 60}, {"kind": "manual"},
    )], actor="alice")
    earlier = loop.runs.create(MODEL, trigger="interval", reason="interval every 3600 s",
                               actor="scheduler")
    loop.runs.finish(earlier.id, "failed", error="test")
    loop.clock.advance(3000)

    first = make()  # its config has no triggers: the table rules
    first.start()
    before = {j.id: j for j in first.jobs() if j.model}
    first.stop()
    second = make(LifecycleConfig.from_dict({"triggers": triggers(
        {"kind": "interval", "seconds": 60})}))
    second.start()
    after = {j.id: j for j in second.jobs() if j.model}

    assert sorted(j.kind for j in after.values()) == ["cron", "interval", "new_labels"]
    assert after.keys() == before.keys()
    interval = next(j for j in after.values() if j.kind == "interval")
    assert interval.next_run_time is not None
    # 3000 of its 3600 s had passed: the period continues instead of restarting.
    remaining = (interval.next_run_time - datetime.now(UTC)).total_seconds()
    assert 590 <= remaining <= 600
    cron = next(j for j in after.values() if j.kind == "cron")
    assert cron.next_run_time is not None and (cron.next_run_time.hour,
                                               cron.next_run_time.minute) == (3, 0)
    assert {j.id for j in second.jobs() if not j.model} == {"sync", "sweep"}


def test_trigger_changes_are_followed_while_running(loop: Loop, make: Make) -> None:
    scheduler = make()
    scheduler.start()
    assert [j for j in scheduler.jobs() if j.model] == []

    loop.triggers.set(MODEL, [TriggerSpec.from_json({"kind": "cron", "cron": "*/5 * * * *"})],
                      actor="alice")
    wait_until(lambda: [j for j in scheduler.jobs() if j.kind == "cron"])
    loop.triggers.set(MODEL, [], actor="alice")
    wait_until(lambda: not [j for j in scheduler.jobs() if j.model])
    assert loop.triggers.get(MODEL) is not None


def test_the_retention_job_purges_the_request_log(loop: Loop, make: Make) -> None:
    X, y = FraudGenerator(40).sample(20)
    now = loop.clock.us()
    log_traffic(loop.requests, X[:10], y[:10], end_us=now - 7200 * 1_000_000)
    log_traffic(loop.requests, X[10:], y[10:], end_us=now)
    scheduler = make(retention_s={MODEL: 3600.0})
    scheduler.start()

    wait_until(lambda: loop.requests.count(MODEL) == 10)
    assert loop.requests.count(MODEL, has_feedback=True) == 10
    assert "purge" in {j.id for j in scheduler.jobs()}


def test_runs_left_behind_by_a_dead_process_are_failed_at_start(
    loop: Loop, make: Make,
) -> None:
    orphan = loop.runs.create(MODEL, trigger="manual", reason="before the crash",
                              actor="alice")
    loop.clock.advance(120)
    scheduler = make(stale_after_s=60)
    scheduler.start()

    failed = loop.runs.get(orphan.id)
    assert failed.status == "failed"
    assert failed.error == "abandoned: no heartbeat for 60 s (its process stopped)"
    fresh = scheduler.run_now(MODEL)
    assert fresh != orphan.id
    assert scheduler.wait(fresh, timeout_s=30).error.startswith("snapshot:")


def test_run_now_needs_a_configured_model_and_a_running_scheduler(
    loop: Loop, make: Make,
) -> None:
    scheduler = make()
    with pytest.raises(PreconditionError, match="not running"):
        scheduler.run_now(MODEL)
    scheduler.start()
    with pytest.raises(LifecycleNotConfigured, match="'other'"):
        scheduler.run_now("other")
    scheduler.stop()
    with pytest.raises(PreconditionError, match="not running"):
        scheduler.run_now(MODEL)
    assert loop.runs.list() == []
