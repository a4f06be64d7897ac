"""``Trainer(cpu_share=…)``: the training child is held to a share of one core by a duty
cycle, and still finishes, times out and is killed like an unthrottled one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifecycle.bootstrap import FRAUD_SIGNATURE
from lifecycle.loop_errors import TrainingTimeout
from lifecycle.synthetic import FraudGenerator
from lifecycle.training import Trainer, TrainSpec
from tests.lifecycle_loop.conftest import TEST_ESTIMATORS
from tests.lifecycle_loop.estimators import SLEEP_ENV

SHARE = 0.5


def data(n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    X, y = FraudGenerator(seed=3).sample(n)
    return X.astype(np.float32), y


def spec(estimator: str, **params: object) -> TrainSpec:
    return TrainSpec(estimator=estimator, params=dict(params), seed=1,
                     task="classification", signature=FRAUD_SIGNATURE)


def test_a_throttled_child_uses_at_most_its_share_and_still_trains(tmp_path: Path) -> None:
    X, y = data()
    trainer = Trainer(workdir=tmp_path, cpu_share=SHARE, duty_period_s=0.1)
    result = trainer.train(
        spec("sklearn.neural_network.MLPClassifier", hidden_layer_sizes=[64], max_iter=60),
        X[:2500], y[:2500], X[2500:], timeout_s=120)
    cpu = result.extra["cpu_seconds"]
    assert cpu is not None and cpu > 0.5  # enough work for the duty cycle to show
    # Stopped for half of every period: the child cannot have run for more than its share
    # of the wall time (plus one running slice of slack); contention only lowers it.
    assert cpu <= SHARE * result.wall_seconds + 0.1, (cpu, result.wall_seconds)
    assert result.onnx_bytes and result.holdout_scores.shape == (500, 2)


def test_a_throttled_child_past_its_timeout_is_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SLEEP_ENV, "120")
    X, y = data(400)
    trainer = Trainer(workdir=tmp_path, allowed_prefixes=("sklearn.", TEST_ESTIMATORS),
                      cpu_share=0.2, duty_period_s=0.1)
    with pytest.raises(TrainingTimeout, match="within 1.5 s"):
        trainer.train(spec(f"{TEST_ESTIMATORS}SleepingClassifier"), X[:300], y[:300],
                      X[300:], timeout_s=1.5)
    assert not list(tmp_path.iterdir())  # the child is gone and its files with it


def test_a_share_outside_zero_to_one_is_refused(tmp_path: Path) -> None:
    for share in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match="cpu_share"):
            Trainer(workdir=tmp_path, cpu_share=share)
