"""The ``[models.NAME.lifecycle]`` table: defaults, a full example, errors naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle.loop_config import LifecycleConfig
from lifecycle.loop_errors import LifecycleConfigError
from lifecycle.traffic import CanaryGuards


def test_defaults() -> None:
    config = LifecycleConfig.from_dict({})
    assert config.estimator == "sklearn.linear_model.LogisticRegression"
    assert config.deploy.policy == "manual" and config.triggers == ()
    assert config.gates.max_auc_drop == 0.0
    assert LifecycleConfig.from_dict(config.to_json()) == config


def test_a_full_table_round_trips() -> None:
    data: dict[str, Any] = {
        "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
        "params": {"max_iter": 50, "learning_rate": 0.1}, "seed": 7,
        "holdout_fraction": 0.25, "window_s": 7200, "max_rows": 50000,
        "seed_dataset": "champion", "min_rows": 500, "min_per_class": 50,
        "allowed_labels": [0, 1], "parity_tolerance": 1e-5, "timeout_s": 120,
        "gates": {"min_auc": 0.8, "max_auc_drop": 0.01, "min_improvement": 0.005,
                  "max_latency_p99_us": 2000, "max_size_bytes": 5_000_000,
                  "maximums": {"log_loss": 0.6}},
        "deploy": {"policy": "canary", "steps": [10, 50, 100], "min_requests": 200,
                   "min_seconds": 30, "guards": {"max_quality_drop": 0.05, "min_labels": 20}},
        "triggers": [{"kind": "drift", "metric": "psi", "threshold": 0.25, "share": 0.3},
                     {"kind": "quality_drop", "metric": "accuracy", "threshold": 0.8},
                     {"kind": "cron", "cron": "0 3 * * *"}, {"kind": "manual"}],
    }
    config = LifecycleConfig.from_dict(data)
    assert config.allowed_labels == (0, 1) and config.max_rows == 50000
    assert config.gates.maximums == {"log_loss": 0.6}
    spec = config.deploy.canary_spec(4)
    assert spec.steps == (10.0, 50.0, 100.0) and spec.min_requests == 200
    assert spec.guards == CanaryGuards(max_quality_drop=0.05, min_labels=20)
    assert [t.kind for t in config.triggers] == ["drift", "quality_drop", "cron", "manual"]
    assert LifecycleConfig.from_dict(config.to_json()) == config
    assert LifecycleConfig.from_dict({"deploy": "direct"}).deploy.policy == "direct"


@pytest.mark.parametrize(("data", "key"), [
    ({"estimator": "LogisticRegression"}, "estimator"),
    ({"holdout_fraction": 0}, "holdout_fraction"),
    ({"holdout_fraction": "0.2"}, "holdout_fraction"),
    ({"window_s": -1}, "window_s"),
    ({"min_rows": 1}, "min_rows"),
    ({"allowed_labels": [0, "1"]}, "allowed_labels"),
    ({"seed_dataset": "v1"}, "seed_dataset"),
    ({"colour": "blue"}, "colour"),
    ({"gates": {"min_auc": 1.5}}, "gates.min_auc"),
    ({"gates": {"max_size_bytes": 0}}, "gates.max_size_bytes"),
    ({"gates": {"max_latency": 5}}, "gates.max_latency"),
    ({"gates": {"minimums": {"accuracy": "high"}}}, "gates.minimums.accuracy"),
    ({"deploy": {"policy": "blue-green"}}, "deploy.policy"),
    ({"deploy": {"policy": "canary", "steps": [50, 10]}}, "deploy.steps"),
    ({"deploy": {"guards": {"patience": 1}}}, "deploy.guards"),
    ({"deploy": {"min_agreement": 2}}, "deploy.min_agreement"),
    ({"triggers": {"kind": "manual"}}, "triggers"),
    ({"triggers": [{"kind": "manual"}, {"kind": "drift", "share": 0}]}, "triggers.1.share"),
    ({"timeout_s": 0}, "timeout_s"),
])
def test_invalid_values_raise_a_value_error_naming_the_key(data: dict[str, Any],
                                                           key: str) -> None:
    with pytest.raises(LifecycleConfigError) as caught:
        LifecycleConfig.from_dict(data)
    assert caught.value.key == key
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(f"lifecycle.{key}: ")
