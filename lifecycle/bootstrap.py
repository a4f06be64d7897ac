"""Train version 1 of the demo model ``fraud`` and hand back its ONNX bytes.

The classifier is a scikit-learn estimator (behind a ``StandardScaler``
unless it is a tree model, see :func:`build_pipeline`), converted with
skl2onnx (no ZipMap) to the fixed serving signature :data:`FRAUD_SIGNATURE`,
and checked against scikit-learn with onnxruntime before anyone can
register it.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from lifecycle.domain import Signature, TensorSpec
from lifecycle.errors import InvalidArtifact
from lifecycle.onnx_inspect import signature_from_onnx
from lifecycle.synthetic import FEATURE_NAMES, N_FEATURES, FraudGenerator

__all__ = [
    "DEFAULT_ESTIMATOR",
    "DEFAULT_PARAMS",
    "FRAUD_SIGNATURE",
    "INPUT_NAME",
    "LABEL_NAME",
    "PARITY_ATOL",
    "PROBABILITIES_NAME",
    "TARGET_OPSET",
    "DemoModel",
    "build_pipeline",
    "check_parity",
    "classifier_to_onnx",
    "train_fraud_demo",
]

INPUT_NAME = "features"
LABEL_NAME = "label"
PROBABILITIES_NAME = "probabilities"

FRAUD_SIGNATURE = Signature(
    inputs=(TensorSpec(INPUT_NAME, "FP32", (-1, N_FEATURES)),),
    outputs=(
        TensorSpec(LABEL_NAME, "INT64", (-1,)),
        TensorSpec(PROBABILITIES_NAME, "FP32", (-1, 2)),
    ),
)

DEFAULT_ESTIMATOR = "sklearn.linear_model.LogisticRegression"
DEFAULT_PARAMS: dict[str, Any] = {"C": 1.0, "max_iter": 1000, "solver": "lbfgs"}
# ai.onnx.ml 3 carries the TreeEnsemble ops that tree estimators need; both load in onnxruntime.
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
PARITY_ATOL = 1e-5
HOLDOUT_FRACTION = 0.2
_TREE_MODULES = ("sklearn.tree", "sklearn.ensemble")


@dataclass(frozen=True, eq=False)
class DemoModel:
    """A trained, converted and parity-checked demo model.

    ``estimator`` and ``params`` rebuild the same classifier through
    :func:`build_pipeline`; ``X_train`` (float32 ``[n_train, 20]``) and
    ``y_train`` (int64 ``[n_train]``) are the exact rows it was fitted on,
    read-only, so they can be registered as its dataset.
    """

    onnx_bytes: bytes
    holdout_auc: float
    n_train: int
    n_holdout: int
    estimator: str
    params: dict[str, Any]
    X_train: np.ndarray
    y_train: np.ndarray
    seed: int
    feature_names: tuple[str, ...] = FEATURE_NAMES
    parity_max_abs_diff: float = 0.0
    train_seconds: float = 0.0
    signature: Signature = field(default=FRAUD_SIGNATURE)


def train_fraud_demo(seed: int = 0, n_rows: int = 20_000) -> DemoModel:
    """Generate ``n_rows`` from ``FraudGenerator(seed)``, hold out 20 % (stratified),
    fit the default estimator on the rest and convert it.

    Deterministic for a given ``seed``. Takes well under a second on one core.

    Raises:
        InvalidArtifact: the converted model's signature or probabilities
            disagree with scikit-learn (see :func:`check_parity`).
    """
    X, y = FraudGenerator(seed).sample(n_rows)
    X_train, X_holdout, y_train, y_holdout = train_test_split(
        X, y, test_size=HOLDOUT_FRACTION, stratify=y, random_state=seed
    )
    started = time.monotonic()
    pipeline = build_pipeline(DEFAULT_ESTIMATOR, DEFAULT_PARAMS)
    pipeline.fit(X_train, y_train)
    train_seconds = time.monotonic() - started
    holdout_auc = float(roc_auc_score(y_holdout, pipeline.predict_proba(X_holdout)[:, 1]))
    onnx_bytes = classifier_to_onnx(pipeline, N_FEATURES)
    diff = check_parity(onnx_bytes, pipeline, X_holdout)
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    y_train = np.ascontiguousarray(y_train, dtype=np.int64)
    X_train.setflags(write=False)
    y_train.setflags(write=False)
    return DemoModel(
        onnx_bytes=onnx_bytes,
        holdout_auc=holdout_auc,
        n_train=len(y_train),
        n_holdout=len(y_holdout),
        estimator=DEFAULT_ESTIMATOR,
        params=dict(DEFAULT_PARAMS),
        X_train=X_train,
        y_train=y_train,
        seed=seed,
        parity_max_abs_diff=diff,
        train_seconds=train_seconds,
    )


def build_pipeline(estimator: str, params: dict[str, Any]) -> Pipeline:
    """``Pipeline(StandardScaler, estimator(**params))`` from a dotted class path.

    Tree models (``sklearn.tree``, ``sklearn.ensemble``) get no scaler: they
    are scale-invariant, and a float32 scaler in ONNX moves values across
    split thresholds, which breaks parity with the float64 scikit-learn model.
    Only ``sklearn.`` classes are accepted, so a stored dotted path cannot
    import arbitrary code.

    Raises:
        ValueError: the path is outside scikit-learn or names nothing.
    """
    module_name, _, class_name = estimator.rpartition(".")
    if not module_name.startswith("sklearn.") or not class_name:
        raise ValueError(f"estimator must be a dotted sklearn class path, got '{estimator}'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"estimator '{estimator}' cannot be imported: {exc}") from exc
    steps: list[tuple[str, Any]] = [("clf", cls(**params))]
    if not module_name.startswith(_TREE_MODULES):
        steps.insert(0, ("scale", StandardScaler()))
    return Pipeline(steps)


def classifier_to_onnx(model: Any, n_features: int) -> bytes:
    """Convert a fitted binary classifier (or pipeline ending in one) to ONNX.

    The graph reads ``features`` FP32 ``[-1, n_features]`` and writes ``label``
    INT64 ``[-1]`` and ``probabilities`` FP32 ``[-1, 2]``; ZipMap is disabled so
    probabilities stay a plain tensor.
    """
    onx = to_onnx(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        final_types=[
            (LABEL_NAME, Int64TensorType([None])),
            (PROBABILITIES_NAME, FloatTensorType([None, 2])),
        ],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    return onx.SerializeToString()


def check_parity(
    onnx_bytes: bytes, model: Any, X: np.ndarray, *, atol: float = PARITY_ATOL
) -> float:
    """Max abs difference between onnxruntime's ``probabilities`` and ``predict_proba``.

    Also checks the graph has the fraud signature (for ``X.shape[1]`` features).

    Raises:
        InvalidArtifact: the signature differs or the difference exceeds ``atol``.
    """
    n_features = int(X.shape[1])
    expected = Signature(
        inputs=(TensorSpec(INPUT_NAME, "FP32", (-1, n_features)),),
        outputs=FRAUD_SIGNATURE.outputs,
    )
    got = signature_from_onnx(onnx_bytes)
    if got != expected:
        raise InvalidArtifact(f"converted model has signature {got}, expected {expected}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(
        [PROBABILITIES_NAME], {INPUT_NAME: np.asarray(X, dtype=np.float32)}
    )
    diff = float(np.max(np.abs(probabilities - model.predict_proba(X)))) if len(X) else 0.0
    if not diff <= atol:
        raise InvalidArtifact(
            f"ONNX parity failed: max abs probability difference {diff:.3g} > {atol:.3g}"
        )
    return diff
