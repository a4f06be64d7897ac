"""Every way a run fails is recorded on the run with its reason, registers nothing and
leaves production alone."""

from __future__ import annotations

import os

import numpy as np
import psutil
import pytest

from lifecycle.domain import PRODUCTION
from lifecycle.rollout import Agreement
from lifecycle.runs import Run
from lifecycle.synthetic import FraudGenerator
from tests.lifecycle_loop.conftest import TEST_ESTIMATORS, Loop
from tests.lifecycle_loop.estimators import SLEEP_ENV
from tests.lifecycle_loop.helpers import MODEL, log_traffic
from tests.lifecycle_loop.test_pipeline import config, log_shifted, run


def assert_untouched(loop: Loop, finished: Run) -> None:
    assert [v.version for v in loop.registry.list_versions(MODEL)] == [1]
    assert loop.registry.get_alias(MODEL, PRODUCTION) == 1
    assert loop.deployer.promoted == []
    assert loop.policies.get_policy(MODEL) is None
    assert finished.candidate_version is None
    assert training_children() == []


def training_children() -> list[psutil.Process]:
    """Spawned children still alive (multiprocessing's resource tracker aside)."""
    return [p for p in psutil.Process(os.getpid()).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


@pytest.mark.parametrize(("rows", "mutate", "reason"), [
    (300, "nan", "features hold 3 NaN or infinite values (first at row 10, feature 4)"),
    (50, None, "50 rows, at least 200 required"),
    (300, "one_class", "only one class present ({'0': 300}); two or more needed"),
])
def test_a_dataset_failing_validation_fails_the_run_at_the_snapshot(
    loop: Loop, rows: int, mutate: str | None, reason: str,
) -> None:
    X, y = FraudGenerator(20).sample(rows)
    if mutate == "nan":
        X[10, 4] = np.nan
        X[11, 5] = np.inf
        X[12, 6] = -np.inf
    if mutate == "one_class":
        y[:] = 0
    log_traffic(loop.requests, X, y, end_us=loop.clock.us())
    finished = run(loop, config())

    assert finished.status == "failed" and finished.outcome == ""
    assert finished.error == f"snapshot: {reason}"
    (step,) = finished.steps
    assert (step.name, step.status) == ("snapshot", "failed")
    assert step.detail["error"] == reason
    assert loop.datasets.list(MODEL) == []
    assert_untouched(loop, finished)


def test_an_estimator_that_raises_fails_the_run_with_its_traceback(loop: Loop) -> None:
    log_shifted(loop, n=400)
    finished = run(loop, config(params={"C": -1.0}))

    assert finished.status == "failed"
    first, traceback = finished.error.split("\n", 1)
    assert first.startswith("train: training raised InvalidParameterError: The 'C' parameter")
    assert "Traceback (most recent call last)" in traceback
    assert "in fit" in traceback
    assert [(s.name, s.status) for s in finished.steps] == [
        ("snapshot", "succeeded"), ("train", "failed")]
    assert_untouched(loop, finished)


def test_a_trainer_past_its_timeout_is_killed_and_the_run_failed(
    loop: Loop, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "120")
    log_shifted(loop, n=400)
    finished = run(loop, config(estimator=f"{TEST_ESTIMATORS}SleepingClassifier",
                                timeout_s=1.5))

    assert finished.status == "failed"
    assert finished.error == ("train: training did not finish within 1.5 s; the process "
                              "was killed")
    train = finished.step("train")
    assert train is not None and train.status == "failed"
    assert train.duration_s is not None and 1.5 <= train.duration_s < 10
    assert_untouched(loop, finished)


def test_a_parity_failure_fails_the_run_at_convert(loop: Loop) -> None:
    log_shifted(loop, n=400)
    # float32 ONNX against float64 scikit-learn never matches exactly.
    finished = run(loop, config(parity_tolerance=0.0))

    assert finished.status == "failed"
    assert finished.error.startswith("convert: ONNX parity failed: max abs difference ")
    assert finished.error.endswith("> tolerance 0 on 120 holdout rows")
    assert [(s.name, s.status) for s in finished.steps] == [
        ("snapshot", "succeeded"), ("train", "succeeded"), ("convert", "failed")]
    assert_untouched(loop, finished)


def test_a_shadow_that_disagrees_rejects_the_candidate(loop: Loop) -> None:
    log_shifted(loop, n=1500, seed=21)
    loop.agreement.answer = Agreement(compared=250, agreed=200)
    finished = run(loop, config(deploy={"policy": "shadow", "shadow_min_requests": 200,
                                        "min_agreement": 0.95, "shadow_fraction": 0.5}))

    assert finished.status == "rejected" and finished.outcome == "rejected"
    assert finished.error == ("deploy: shadow agreement 0.8000 below 0.95 over 250 requests")
    assert loop.registry.get_version(MODEL, 2).status == "rejected"
    assert loop.registry.get_alias(MODEL, PRODUCTION) == 1
    assert loop.deployer.promoted == []
    # The mirror policy was installed for the check and removed after it.
    actions = [e.action for e in reversed(loop.registry.list_events(model=MODEL, limit=6))]
    assert actions[-4:] == ["policy.set", "policy.clear", "version.status", "run.finished"]
    assert loop.policies.get_policy(MODEL) is None
    set_event = loop.registry.list_events(model=MODEL, action="policy.set")[0]
    assert set_event.detail["after"]["shadows"] == [{"version": 2, "fraction": 0.5}]
