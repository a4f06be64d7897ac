"""The demo's synthetic transactions and the training of fraud version 1."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lifecycle.bootstrap import (
    FRAUD_SIGNATURE,
    DemoModel,
    build_pipeline,
    check_parity,
    classifier_to_onnx,
    train_fraud_demo,
)
from lifecycle.errors import InvalidArtifact
from lifecycle.onnx_inspect import signature_from_onnx
from lifecycle.synthetic import FEATURE_NAMES, INPUT_DRIFT, N_FEATURES, FraudGenerator

FLAGS = ["card_present", "is_online", "is_foreign", "new_device", "address_mismatch"]


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _fit(X: np.ndarray, y: np.ndarray):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)


@pytest.fixture(scope="module")
def demo() -> DemoModel:
    return train_fraud_demo(seed=0, n_rows=20_000)


@pytest.fixture(scope="module")
def baseline() -> tuple[np.ndarray, np.ndarray]:
    return FraudGenerator(7).sample(20_000)


# --- generator ------------------------------------------------------------------------


def test_feature_names_are_twenty_distinct_names() -> None:
    assert len(FEATURE_NAMES) == N_FEATURES == 20
    assert len(set(FEATURE_NAMES)) == 20


def test_sample_shapes_dtypes_and_values(baseline: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = baseline
    assert X.dtype == np.float32 and X.shape == (20_000, 20)
    assert y.dtype == np.int64 and y.shape == (20_000,)
    assert set(np.unique(y)) == {0, 1}
    assert np.isfinite(X).all()
    for name in FLAGS:
        assert set(np.unique(X[:, FEATURE_NAMES.index(name)])) == {0.0, 1.0}
    assert (X[:, FEATURE_NAMES.index("amount_usd")] > 0).all()
    hours = X[:, FEATURE_NAMES.index("hour_of_day")]
    assert hours.min() >= 0.0 and hours.max() < 24.0


def test_label_rate_is_a_realistic_minority(baseline: tuple[np.ndarray, np.ndarray]) -> None:
    assert 0.10 <= baseline[1].mean() <= 0.20


def test_same_seed_same_rows_and_calls_continue_the_stream() -> None:
    a, b = FraudGenerator(3), FraudGenerator(3)
    first_a, first_b = a.sample(500), b.sample(500)
    np.testing.assert_array_equal(first_a[0], first_b[0])
    np.testing.assert_array_equal(first_a[1], first_b[1])
    second_a = a.sample(500)
    assert not np.array_equal(first_a[0], second_a[0])
    assert not np.array_equal(first_a[0], FraudGenerator(4).sample(500)[0])


def test_input_shift_moves_feature_means_but_not_the_rule(
    baseline: tuple[np.ndarray, np.ndarray],
) -> None:
    X0, y0 = baseline
    X1, y1 = FraudGenerator(7, input_shift=1.0).sample(20_000)
    moved = np.abs(X1.mean(axis=0) - X0.mean(axis=0)) / X0.std(axis=0)
    drifting = INPUT_DRIFT != 0
    assert (moved[drifting] > 0.1).sum() >= 10
    assert moved[FEATURE_NAMES.index("amount_usd")] > 0.5
    assert 0.10 <= y1.mean() <= 0.30
    # Covariate shift only: a model fitted before still ranks well after.
    model = _fit(X0, y0)
    assert roc_auc_score(y1, model.predict_proba(X1)[:, 1]) >= 0.85


def test_concept_shift_keeps_inputs_but_breaks_a_model_fitted_before(
    baseline: tuple[np.ndarray, np.ndarray],
) -> None:
    X0, y0 = baseline
    model = _fit(X0, y0)
    X_before, y_before = FraudGenerator(8).sample(10_000)
    X_after, y_after = FraudGenerator(8, concept_shift=1.0).sample(10_000)
    # Same seed, same draws: only the labels may differ.
    np.testing.assert_array_equal(X_before, X_after)
    assert not np.array_equal(y_before, y_after)
    auc_before = roc_auc_score(y_before, model.predict_proba(X_before)[:, 1])
    auc_after = roc_auc_score(y_after, model.predict_proba(X_after)[:, 1])
    assert auc_before >= 0.85
    assert auc_after <= auc_before - 0.2
    # A model refitted after the change recovers.
    refit = _fit(*FraudGenerator(9, concept_shift=1.0).sample(10_000))
    assert roc_auc_score(y_after, refit.predict_proba(X_after)[:, 1]) >= 0.85


def test_stream_shifts_at_the_given_row() -> None:
    X, y = FraudGenerator(5).stream(6_000, shift_at=2_000, concept_shift=1.0)
    assert X.shape == (6_000, 20) and y.shape == (6_000,)
    head_X, head_y = FraudGenerator(5).sample(2_000)
    np.testing.assert_array_equal(X[:2_000], head_X)
    np.testing.assert_array_equal(y[:2_000], head_y)
    again = FraudGenerator(5).stream(6_000, shift_at=2_000, concept_shift=1.0)
    np.testing.assert_array_equal(X, again[0])
    model = _fit(*FraudGenerator(6).sample(10_000))
    auc_head = roc_auc_score(y[:2_000], model.predict_proba(X[:2_000])[:, 1])
    auc_tail = roc_auc_score(y[2_000:], model.predict_proba(X[2_000:])[:, 1])
    assert auc_tail <= auc_head - 0.2


def test_sample_overrides_apply_to_one_call_only() -> None:
    gen = FraudGenerator(2)
    shifted, _ = gen.sample(5_000, input_shift=2.0)
    plain, _ = gen.sample(5_000)
    amount = FEATURE_NAMES.index("amount_usd")
    assert np.median(shifted[:, amount]) > 2 * np.median(plain[:, amount])
    assert gen.input_shift == 0.0


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="shift_at"):
        FraudGenerator(0).stream(10, shift_at=11)
    with pytest.raises(ValueError, match="n must be"):
        FraudGenerator(0).sample(-1)


# --- bootstrap ------------------------------------------------------------------------


def test_demo_reaches_the_auc_floor(demo: DemoModel) -> None:
    assert demo.holdout_auc >= 0.85
    assert demo.n_train + demo.n_holdout == 20_000
    assert demo.n_holdout == 4_000


def test_demo_graph_has_the_exact_serving_names_types_and_shapes(demo: DemoModel) -> None:
    session = _session(demo.onnx_bytes)
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type) == ("features", "tensor(float)")
    assert not isinstance(inp.shape[0], int) and inp.shape[1] == 20
    outputs = {o.name: o for o in session.get_outputs()}
    assert list(outputs) == ["label", "probabilities"]
    assert outputs["label"].type == "tensor(int64)"
    assert len(outputs["label"].shape) == 1 and not isinstance(outputs["label"].shape[0], int)
    assert outputs["probabilities"].type == "tensor(float)"
    assert outputs["probabilities"].shape[1] == 2
    assert not isinstance(outputs["probabilities"].shape[0], int)
    assert signature_from_onnx(demo.onnx_bytes) == FRAUD_SIGNATURE
    ops = {node.op_type for node in onnx.load_from_string(demo.onnx_bytes).graph.node}
    assert "ZipMap" not in ops


def test_demo_is_rebuilt_from_estimator_and_params_with_parity(demo: DemoModel) -> None:
    assert demo.estimator == "sklearn.linear_model.LogisticRegression"
    model = build_pipeline(demo.estimator, demo.params).fit(demo.X_train, demo.y_train)
    X, _ = FraudGenerator(99).sample(3_000)
    label, probabilities = _session(demo.onnx_bytes).run(None, {"features": X})
    assert label.dtype == np.int64 and label.shape == (3_000,)
    assert probabilities.dtype == np.float32 and probabilities.shape == (3_000, 2)
    assert np.max(np.abs(probabilities - model.predict_proba(X))) <= 1e-5
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert demo.parity_max_abs_diff <= 1e-5


def test_demo_keeps_its_training_rows_read_only(demo: DemoModel) -> None:
    assert demo.X_train.dtype == np.float32 and demo.X_train.shape == (demo.n_train, 20)
    assert demo.y_train.dtype == np.int64 and demo.y_train.shape == (demo.n_train,)
    assert 0.10 <= demo.y_train.mean() <= 0.20
    with pytest.raises(ValueError):
        demo.X_train[0, 0] = 1.0
    assert demo.feature_names == FEATURE_NAMES and demo.seed == 0


def test_training_is_deterministic_by_seed() -> None:
    a = train_fraud_demo(seed=4, n_rows=2_000)
    b = train_fraud_demo(seed=4, n_rows=2_000)
    c = train_fraud_demo(seed=5, n_rows=2_000)
    assert a.onnx_bytes == b.onnx_bytes and a.holdout_auc == b.holdout_auc
    assert a.onnx_bytes != c.onnx_bytes


def test_parity_check_rejects_a_model_that_does_not_match() -> None:
    X, y = FraudGenerator(1).sample(2_000)
    converted = build_pipeline("sklearn.linear_model.LogisticRegression", {}).fit(X, y)
    other = build_pipeline("sklearn.linear_model.LogisticRegression", {"C": 1e-4}).fit(X, y)
    data = classifier_to_onnx(converted, N_FEATURES)
    assert check_parity(data, converted, X) <= 1e-5
    with pytest.raises(InvalidArtifact, match="parity failed"):
        check_parity(data, other, X)
    with pytest.raises(InvalidArtifact, match="signature"):
        check_parity(data, converted, X[:, :10])


def test_build_pipeline_scales_linear_models_only_and_refuses_foreign_paths() -> None:
    linear = build_pipeline("sklearn.linear_model.LogisticRegression", {"C": 0.5})
    assert [name for name, _ in linear.steps] == ["scale", "clf"]
    assert linear.named_steps["clf"].C == 0.5
    tree = build_pipeline("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 5})
    assert [name for name, _ in tree.steps] == ["clf"]
    with pytest.raises(ValueError, match="sklearn"):
        build_pipeline("os.system", {})
    with pytest.raises(ValueError, match="cannot be imported"):
        build_pipeline("sklearn.linear_model.NoSuchModel", {})
