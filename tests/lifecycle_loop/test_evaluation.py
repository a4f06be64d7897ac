"""Holdout evaluation of ONNX models, the parity check, and rollouts by policy."""

from __future__ import annotations

import hashlib

import pytest

from lifecycle.bootstrap import DemoModel, build_pipeline
from lifecycle.domain import PRODUCTION
from lifecycle.evaluation import evaluate, parity_max_abs_diff
from lifecycle.loop_config import DeployConfig
from lifecycle.loop_errors import DeployFailed, ParityFailed
from lifecycle.rollout import Agreement, RequestLogAgreement, Rollout
from lifecycle.synthetic import FraudGenerator
from tests.lifecycle_loop.conftest import Loop
from tests.lifecycle_loop.helpers import MODEL, log_shadow, log_traffic, predict


def test_classification_metrics_latency_and_size(demo: DemoModel) -> None:
    X, y = FraudGenerator(50).sample(800)
    before = evaluate(demo.onnx_bytes, X, y, task="classification", latency_rows=50)
    assert 0.88 < before.metrics["roc_auc"] < 0.96
    assert 0.85 < before.metrics["accuracy"] < 0.95
    assert 0 < before.metrics["log_loss"] < 0.4 and 0 < before.metrics["f1"] < 1
    assert 0 < before.latency_p99_us < 10_000
    assert before.size_bytes == len(demo.onnx_bytes) and before.rows == 800
    assert before.flat()["size_bytes"] == float(len(demo.onnx_bytes))
    X, y = FraudGenerator(51, concept_shift=1.0).sample(800)
    after = evaluate(demo.onnx_bytes, X, y, task="classification", latency_rows=50)
    assert after.metrics["roc_auc"] < before.metrics["roc_auc"] - 0.2


def test_parity_between_the_estimator_and_its_onnx_graph(demo: DemoModel) -> None:
    pipeline = build_pipeline(demo.estimator, demo.params).fit(demo.X_train, demo.y_train)
    X, _ = FraudGenerator(52).sample(200)
    expected = pipeline.predict_proba(X)
    diff = parity_max_abs_diff(demo.onnx_bytes, X, expected, task="classification",
                               tolerance=1e-4)
    assert 0 < diff < 1e-5
    with pytest.raises(ParityFailed, match="> tolerance 0 on 200 holdout rows"):
        parity_max_abs_diff(demo.onnx_bytes, X, expected, task="classification",
                            tolerance=0.0)
    with pytest.raises(ParityFailed, match="shape"):
        parity_max_abs_diff(demo.onnx_bytes, X, expected[:, :1], task="classification",
                            tolerance=1.0)
    with pytest.raises(ParityFailed, match="cannot be scored"):
        parity_max_abs_diff(b"not onnx", X, expected, task="classification", tolerance=1.0)


def test_shadow_agreement_from_the_request_log(loop: Loop, demo: DemoModel) -> None:
    X, y = FraudGenerator(53).sample(100)
    now = loop.clock.us()
    ids = log_traffic(loop.requests, X, y, end_us=now, onnx_bytes=demo.onnx_bytes)
    predicted, _ = predict(demo.onnx_bytes, X)
    flipped = predicted.copy()
    flipped[:10] = 1 - flipped[:10]
    log_shadow(loop.requests, ids[:80], X[:80], flipped[:80], end_us=now, version=2)
    log_shadow(loop.requests, ids[80:], X[80:], predicted[80:], end_us=now, version=3)

    source = RequestLogAgreement(loop.requests)
    assert source.agreement(MODEL, 2, now - 10_000_000) == Agreement(80, 70)
    assert source.agreement(MODEL, 3, now - 10_000_000) == Agreement(20, 20)
    assert source.agreement(MODEL, 2, now + 1) == Agreement(0, 0)
    assert Agreement(80, 70).rate == 0.875 and Agreement().rate is None


def register_candidate(loop: Loop, payload: bytes = b"candidate") -> int:
    version, _ = loop.registry.register_version(
        MODEL, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), actor="test")
    return version.version


def test_rollout_policies(loop: Loop) -> None:
    candidate = register_candidate(loop)
    rollout = Rollout(loop.registry, deployer=loop.deployer, policies=loop.policies,
                      agreement=loop.agreement, clock=loop.clock, poll_s=0.01)
    manual = rollout.deploy(MODEL, candidate, 1, DeployConfig())
    assert manual.outcome == "registered" and loop.deployer.promoted == []

    loop.agreement.answer = Agreement(compared=300, agreed=297)
    shadow = DeployConfig(policy="shadow", shadow_min_requests=300, min_agreement=0.98)
    promoted = rollout.deploy(MODEL, candidate, 1, shadow)
    assert promoted.outcome == "promoted" and promoted.detail["agreement"] == 0.99
    assert promoted.reason == "promoted (shadow agreement 0.9900 over 300 requests)"
    assert loop.registry.get_alias(MODEL, PRODUCTION) == candidate
    assert loop.policies.get_policy(MODEL) is None

    loop.agreement.answer = Agreement(compared=10, agreed=10)
    late = register_candidate(loop, b"late")
    timed_out = rollout.deploy(MODEL, late, candidate, DeployConfig(
        policy="shadow", shadow_min_requests=300, shadow_timeout_s=0.05))
    assert timed_out.outcome == "rejected"
    assert timed_out.reason.startswith("shadow check timed out after 0.05 s with 10/300")
    assert loop.registry.get_version(MODEL, late).status == "rejected"

    bare = Rollout(loop.registry, clock=loop.clock)
    with pytest.raises(DeployFailed, match="needs a deployer"):
        bare.deploy(MODEL, candidate, 1, DeployConfig(policy="direct"))
    with pytest.raises(DeployFailed, match="canary controller"):
        bare.deploy(MODEL, candidate, 1, DeployConfig(policy="canary"))


def test_without_a_champion_canary_and_shadow_promote_directly(loop: Loop) -> None:
    loop.registry.delete_alias(MODEL, PRODUCTION, actor="test")
    rollout = Rollout(loop.registry, deployer=loop.deployer, canary=loop.canary,
                      clock=loop.clock)
    result = rollout.deploy(MODEL, 1, None, DeployConfig(policy="canary"))
    assert (result.outcome, result.reason) == ("promoted", "promoted (no champion to canary "
                                                           "against)")
    assert loop.registry.get_alias(MODEL, PRODUCTION) == 1
    assert loop.deployer.promoted == [(MODEL, 1)]
