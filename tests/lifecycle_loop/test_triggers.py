"""Each condition trigger fires above its threshold and stays quiet below it; trigger
lists are stored as plain JSON, seeded once by config, replaced over the API."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle.bootstrap import DemoModel
from lifecycle.domain import PRODUCTION
from lifecycle.loop_config import TriggerSpec
from lifecycle.loop_errors import LifecycleConfigError
from lifecycle.synthetic import FraudGenerator
from lifecycle.triggers import TriggerDecision, register_bootstrap_dataset
from tests.lifecycle_loop.conftest import Loop
from tests.lifecycle_loop.helpers import MODEL, log_traffic


@pytest.fixture
def db_url(database_url: str) -> str:
    """A store contract: every test here runs on SQLite and PostgreSQL."""
    return database_url


MINUTE_US = 60_000_000


def spec(**data: Any) -> TriggerSpec:
    return TriggerSpec.from_json(data)


def check(loop: Loop, **data: Any) -> TriggerDecision:
    return loop.checker.check(MODEL, spec(**data))


def sample(seed: int, n: int, **shift: float) -> tuple[Any, Any]:
    return FraudGenerator(seed, **shift).sample(n)


def test_new_labels_fires_at_its_threshold_counting_since_the_last_run(loop: Loop) -> None:
    X, y = sample(1, 160)
    log_traffic(loop.requests, X[:60], y[:60], end_us=loop.clock.us() - MINUTE_US)
    log_traffic(loop.requests, X[60:], None, end_us=loop.clock.us())  # unlabelled
    quiet = check(loop, kind="new_labels", min_labels=100, cooldown_s=0)
    assert not quiet.fire and quiet.reason == "60/100 new labels"

    X, y = sample(2, 40)
    log_traffic(loop.requests, X, y, end_us=loop.clock.us())
    fired = check(loop, kind="new_labels", min_labels=100, cooldown_s=0)
    assert fired.fire
    assert fired.reason == "new_labels: 100 labelled requests so far (>= 100)"

    done = loop.runs.create(MODEL, trigger="new_labels", reason=fired.reason, actor="test")
    loop.runs.finish(done.id, "succeeded")
    loop.clock.advance(60)
    X, y = sample(3, 30)
    log_traffic(loop.requests, X, y, end_us=loop.clock.us())
    after = check(loop, kind="new_labels", min_labels=30, cooldown_s=0)
    assert after.fire and after.detail["labelled"] == 30
    assert "since the last run" in after.reason
    assert not check(loop, kind="new_labels", min_labels=31, cooldown_s=0).fire


DRIFT = {"kind": "drift", "window_s": 600, "min_rows": 200, "threshold": 0.2, "share": 0.3}


def test_drift_against_the_champions_training_dataset(loop: Loop) -> None:
    dataset = register_bootstrap_dataset(loop.registry, loop.datasets, MODEL)
    assert dataset is not None
    X, _ = sample(4, 300)
    log_traffic(loop.requests, X, None, end_us=loop.clock.us())
    steady = check(loop, **DRIFT)
    assert not steady.fire
    assert steady.detail["report"]["share"] < 0.1
    assert steady.detail["against"] == f"training dataset {dataset.id} of version 1"

    loop.clock.advance(700)  # the unshifted traffic leaves the window
    X, _ = sample(5, 300, input_shift=1.0)
    log_traffic(loop.requests, X, None, end_us=loop.clock.us())
    shifted = check(loop, **DRIFT)
    assert shifted.fire
    assert shifted.detail["report"]["share"] >= 0.5
    assert shifted.reason.startswith("drift: psi > 0.2 on ")
    by_ks = check(loop, **{**DRIFT, "metric": "ks", "threshold": 0.1})
    assert by_ks.fire and by_ks.reason.startswith("drift: ks > 0.1 on ")
    # A stricter share than what drifted keeps it quiet.
    assert not check(loop, **{**DRIFT, "share": 1.0}).fire


def test_drift_falls_back_to_the_champions_early_traffic(loop: Loop) -> None:
    X, _ = sample(6, 400)
    log_traffic(loop.requests, X, None, end_us=loop.clock.us() - 30 * MINUTE_US)
    X, _ = sample(7, 300)
    log_traffic(loop.requests, X, None, end_us=loop.clock.us())
    steady = check(loop, **DRIFT, reference_rows=400)
    assert not steady.fire
    assert steady.detail["against"] == "the first 400 requests of version 1 (fallback)"

    loop.clock.advance(700)
    X, _ = sample(8, 300, input_shift=1.0)
    log_traffic(loop.requests, X, None, end_us=loop.clock.us())
    shifted = check(loop, **DRIFT, reference_rows=400)
    assert shifted.fire and shifted.reason.endswith("(fallback)")


def test_drift_needs_enough_reference_and_recent_rows(loop: Loop) -> None:
    assert check(loop, **DRIFT).reason == "no reference: version 1 has no dataset and 0 " \
                                          "early requests"
    register_bootstrap_dataset(loop.registry, loop.datasets, MODEL)
    X, _ = sample(9, 150, input_shift=1.0)
    log_traffic(loop.requests, X, None, end_us=loop.clock.us())
    assert check(loop, **DRIFT) == TriggerDecision(False, "150/200 recent requests")


def test_quality_drop_fires_when_the_champions_live_metric_falls(
    loop: Loop, demo: DemoModel,
) -> None:
    quality = {"kind": "quality_drop", "window_s": 600, "min_labels": 300}
    X, y = sample(10, 500)
    log_traffic(loop.requests, X, y, end_us=loop.clock.us(), onnx_bytes=demo.onnx_bytes)
    good = check(loop, **quality, metric="accuracy", threshold=0.85)
    assert not good.fire and good.detail["value"] > 0.87
    assert not check(loop, **quality, metric="roc_auc", threshold=0.8,
                     output="probabilities").fire

    loop.clock.advance(700)
    X, y = sample(11, 500, concept_shift=1.0)
    log_traffic(loop.requests, X, y, end_us=loop.clock.us(), onnx_bytes=demo.onnx_bytes)
    dropped = check(loop, **quality, metric="accuracy", threshold=0.85)
    assert dropped.fire and dropped.detail["value"] < 0.82
    assert dropped.reason.startswith("quality_drop: live accuracy of version 1 is 0.")
    by_auc = check(loop, **quality, metric="roc_auc", threshold=0.8, output="probabilities")
    assert by_auc.fire and by_auc.detail["value"] < 0.65
    assert check(loop, **{**quality, "min_labels": 501}, metric="accuracy",
                 threshold=0.85) == TriggerDecision(False, "500/501 labels in window")


def test_condition_triggers_wait_for_the_cooldown_and_a_champion(loop: Loop) -> None:
    X, y = sample(12, 50)
    log_traffic(loop.requests, X, y, end_us=loop.clock.us())
    run = loop.runs.create(MODEL, trigger="manual", reason="test", actor="test")
    loop.runs.finish(run.id, "failed", error="test")
    labels = {"kind": "new_labels", "min_labels": 10, "cooldown_s": 300}
    assert check(loop, **labels).reason == f"cooling down after run {run.id}"
    loop.clock.advance(301)
    assert check(loop, **labels).reason == "0/10 new labels"
    loop.registry.delete_alias(MODEL, PRODUCTION, actor="test")
    assert check(loop, **labels).reason == "no production version"


def test_trigger_lists_are_seeded_once_and_replaced_by_set(loop: Loop) -> None:
    seeded = [spec(kind="interval", seconds=600)]
    assert loop.triggers.seed(MODEL, seeded)
    assert not loop.triggers.seed(MODEL, [spec(kind="manual")])
    stored = loop.triggers.get(MODEL)
    assert stored is not None and stored.specs == tuple(seeded) and stored.revision == 1

    replaced = loop.triggers.set(MODEL, [spec(kind="cron", cron="0 4 * * *"), spec(
        kind="drift", metric="ks")], actor="alice")
    assert replaced.revision == 2 and replaced.actor == "alice"
    assert [s.to_json() for s in replaced.specs] == [
        {"kind": "cron", "cron": "0 4 * * *"},
        {"kind": "drift", "metric": "ks", "threshold": 0.1, "share": 0.3, "window_s": 3600.0,
         "min_rows": 200, "reference_rows": 1000, "check_every_s": 30.0, "cooldown_s": 600.0}]
    emptied = loop.triggers.set(MODEL, [], actor="alice")
    assert emptied.specs == () and emptied.revision == 3
    assert not loop.triggers.seed(MODEL, seeded)  # an empty list set by an operator stays
    event = loop.registry.list_events(model=MODEL, action="triggers.set")[0]
    assert event.actor == "alice" and event.detail["after"] == []
    assert [t.model for t in loop.triggers.list()] == [MODEL]


@pytest.mark.parametrize(("data", "key", "message"), [
    ({"kind": "hourly"}, "trigger.kind", "expected one of interval, cron"),
    ({"kind": "interval"}, "trigger.seconds", "required"),
    ({"kind": "interval", "seconds": -5}, "trigger.seconds", "must be > 0"),
    ({"kind": "cron", "cron": "every day"}, "trigger.cron", "not a crontab expression"),
    ({"kind": "drift", "share": 1.5}, "trigger.share", "must be <= 1"),
    ({"kind": "drift", "metric": "kl"}, "trigger.metric", "expected one of psi, ks"),
    ({"kind": "quality_drop"}, "trigger.threshold", "required"),
    ({"kind": "new_labels", "min_labels": 0}, "trigger.min_labels", "integer >= 1"),
    ({"kind": "manual", "seconds": 5}, "trigger.seconds", "unknown key"),
])
def test_invalid_trigger_specs_name_the_key(data: dict[str, Any], key: str,
                                            message: str) -> None:
    with pytest.raises(LifecycleConfigError, match=message) as caught:
        TriggerSpec.from_json(data)
    assert caught.value.key == key
