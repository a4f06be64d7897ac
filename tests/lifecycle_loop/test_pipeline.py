"""Full runs on logged traffic: a better candidate is registered with its lineage and
deployed by policy; a worse one is registered ``rejected`` and never promoted."""

from __future__ import annotations

from typing import Any

import numpy as np

from lifecycle.deployer import Deployer
from lifecycle.domain import PRODUCTION
from lifecycle.gates import GateReport
from lifecycle.loop_config import LifecycleConfig
from lifecycle.runs import Run
from lifecycle.synthetic import FraudGenerator
from lifecycle.triggers import register_bootstrap_dataset
from tests.lifecycle_loop.conftest import Loop
from tests.lifecycle_loop.helpers import MODEL, log_traffic

STEPS = ["snapshot", "train", "convert", "evaluate", "gates", "register", "deploy"]


def config(**overrides: Any) -> LifecycleConfig:
    base: dict[str, Any] = {"min_rows": 200, "min_per_class": 20, "holdout_fraction": 0.3,
                            "window_s": 3600, "timeout_s": 60}
    return LifecycleConfig.from_dict({**base, **overrides})


def run(loop: Loop, cfg: LifecycleConfig, reason: str = "test") -> Run:
    created = loop.runs.create(MODEL, trigger="manual", reason=reason, actor="test",
                               params={"config": cfg.to_json()})
    return loop.retrainer.execute(created.id, cfg)


def log_shifted(loop: Loop, n: int = 1500, seed: int = 11) -> None:
    """Labelled traffic from after the concept shift, served by the champion."""
    X, y = FraudGenerator(seed, concept_shift=1.0).sample(n)
    log_traffic(loop.requests, X, y, end_us=loop.clock.us())


def test_a_better_candidate_is_registered_with_lineage_and_promoted_directly(
    loop: Loop,
) -> None:
    assert isinstance(loop.deployer, Deployer)
    log_shifted(loop)
    finished = run(loop, config(deploy="direct"), reason="labels arrived")

    assert finished.status == "succeeded", finished.error
    assert finished.outcome == "promoted"
    assert [s.name for s in finished.steps] == STEPS
    assert all(s.status == "succeeded" and s.duration_s is not None for s in finished.steps)
    assert finished.candidate_version == 2 and finished.champion_version == 1
    assert finished.metrics["roc_auc"] > finished.metrics["champion_roc_auc"] + 0.2
    assert 0 <= finished.metrics["parity_max_abs_diff"] <= 1e-4

    dataset = loop.datasets.get(finished.dataset_id or 0)
    assert dataset.rows == 1500 and dataset.run_id == finished.id
    assert dataset.source == "request_log"
    assert sum(dataset.label_counts.values()) == 1500
    assert dataset.window_end_us == loop.clock.us()
    assert len(dataset.profiles) == 20
    assert loop.datasets.for_version(MODEL, 2) == dataset
    arrays = loop.datasets.load(dataset)
    assert arrays.features.shape == (1500, 20) and arrays.features.dtype == np.float32

    version = loop.registry.get_version(MODEL, 2)
    assert version.status == "registered"
    lineage = version.metadata["lineage"]
    assert lineage["run_id"] == finished.id
    assert lineage["dataset"]["id"] == dataset.id
    assert lineage["dataset"]["content_sha256"] == dataset.content_sha256
    assert lineage["parent_version"] == 1
    assert lineage["params"]["estimator"] == "sklearn.linear_model.LogisticRegression"
    assert lineage["code_version"]["package"] == "0.1.0"
    assert lineage["reason"] == "labels arrived"
    report = GateReport.from_json(version.metadata["gates"])
    assert report.passed and report.champion_version == 1
    assert version.metadata["metrics"]["roc_auc"] == finished.metrics["roc_auc"]

    assert loop.deployer.promoted == [(MODEL, 2)]
    assert loop.registry.get_alias(MODEL, PRODUCTION) == 2
    events = loop.registry.list_events(model=MODEL, action="run.finished")
    assert events[0].detail["run_id"] == finished.id
    assert events[0].detail["outcome"] == "promoted"


def test_a_worse_candidate_is_registered_rejected_and_never_promoted(loop: Loop) -> None:
    # Traffic from the champion's own world plus its training data, and a stump: worse.
    seed = register_bootstrap_dataset(loop.registry, loop.datasets, MODEL)
    assert seed is not None
    X, y = FraudGenerator(12).sample(1500)
    log_traffic(loop.requests, X, y, end_us=loop.clock.us())
    stump = config(estimator="sklearn.tree.DecisionTreeClassifier",
                   params={"max_depth": 1}, deploy="direct", seed_dataset="champion")
    finished = run(loop, stump)
    dataset = loop.datasets.get(finished.dataset_id or 0)
    assert dataset.rows == seed.rows + 1500
    assert dataset.source == f"request_log+dataset:{seed.id}"

    assert finished.status == "rejected" and finished.outcome == "rejected"
    assert finished.error.startswith("gates: roc_auc")
    assert "worse than the allowed drop of 0" in finished.error
    assert [s.name for s in finished.steps] == STEPS[:-1]
    version = loop.registry.get_version(MODEL, 2)
    assert version.status == "rejected"
    report = GateReport.from_json(version.metadata["gates"])
    assert not report.passed
    assert [c.name for c in report.failures] == ["max_auc_drop"]
    assert report.candidate["roc_auc"] < report.champion["roc_auc"]  # type: ignore[index]
    assert loop.deployer.promoted == []
    assert loop.registry.get_alias(MODEL, PRODUCTION) == 1


def test_canary_deploy_starts_the_routing_controller(loop: Loop) -> None:
    log_shifted(loop, seed=13)
    cfg = config(deploy={"policy": "canary", "steps": [10, 50, 100], "min_requests": 20,
                         "min_seconds": 5})
    finished = run(loop, cfg)

    assert finished.status == "succeeded", finished.error
    assert finished.outcome == "canary"
    state = loop.policies.get_canary(MODEL)
    assert state is not None and state.status == "running"
    assert (state.version, state.champion, state.share) == (2, 1, 10.0)
    assert state.spec.min_requests == 20
    policy = loop.policies.get_policy(MODEL)
    assert policy is not None and policy.weights() == {2: 10.0, 1: 90.0}
    deploy = finished.step("deploy")
    assert deploy is not None and deploy.detail["experiment_id"] == state.experiment_id
    assert loop.deployer.promoted == []
    assert loop.registry.get_alias(MODEL, PRODUCTION) == 1

