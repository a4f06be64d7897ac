"""Offline evaluation of ONNX models on a holdout, and the parity check.

Candidate and champion are scored by onnxruntime on the very same holdout rows (the
newest of the snapshot), so their metrics compare like for like:

- classification: ``accuracy``, ``roc_auc`` (one-vs-rest when more than two classes;
  absent when the holdout holds one class), ``log_loss``, ``f1`` (binary: of the last
  class; else macro);
- regression: ``rmse``, ``mae``, ``r2``;
- both: ``latency_p99_us`` (single-row ``session.run`` after a warm-up, one intra-op
  thread) and ``size_bytes`` of the artifact.

Blocking and CPU-bound but short (a few thousand rows); runs on the caller's thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn import metrics as skm

from lifecycle.errors import InvalidArtifact
from lifecycle.loop_errors import ParityFailed

__all__ = [
    "Evaluation",
    "OnnxScorer",
    "classification_metrics",
    "evaluate",
    "parity_max_abs_diff",
    "regression_metrics",
]


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    latency_p99_us: float
    size_bytes: int
    rows: int
    extra: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """Metrics plus ``latency_p99_us`` and ``size_bytes``: what gates read."""
        return {**self.metrics, "latency_p99_us": self.latency_p99_us,
                "size_bytes": float(self.size_bytes)}


class OnnxScorer:
    """One onnxruntime session (one thread) and the output that holds the scores: for
    classification the floating 2-D output (probabilities), for regression the first
    floating output. ``InvalidArtifact`` if the bytes do not load or have no such output.
    """

    def __init__(self, onnx_bytes: bytes, task: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(onnx_bytes, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise InvalidArtifact(f"onnxruntime cannot load the model: {exc}") from exc
        self.size_bytes = len(onnx_bytes)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InvalidArtifact(f"expected one input, got {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_dtype = np.float64 if inputs[0].type == "tensor(double)" else np.float32
        floating = [o for o in self.session.get_outputs()
                    if o.type in ("tensor(float)", "tensor(double)")]
        if task == "classification":
            floating = [o for o in floating if len(o.shape) == 2]
        if not floating:
            raise InvalidArtifact(f"no {'probability' if task == 'classification' else 'score'}"
                                  " output among "
                                  f"{[o.name for o in self.session.get_outputs()]}")
        self.output_name = floating[0].name

    def scores(self, X: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name],
                                  {self.input_name: np.asarray(X, dtype=self.input_dtype)})
        out = np.asarray(out, dtype=np.float64)
        return out.reshape(len(X), -1)

    def latency_p99_us(self, X: np.ndarray, *, rows: int = 200, warmup: int = 20) -> float:
        if len(X) == 0:
            return 0.0
        feed = np.asarray(X, dtype=self.input_dtype)
        names = [self.output_name]
        for i in range(warmup):
            self.session.run(names, {self.input_name: feed[i % len(feed):][:1]})
        samples = []
        for i in range(rows):
            row = feed[i % len(feed):][:1]
            started = time.perf_counter()
            self.session.run(names, {self.input_name: row})
            samples.append((time.perf_counter() - started) * 1e6)
        return float(np.percentile(samples, 99))


def classification_metrics(
    y: np.ndarray, probabilities: np.ndarray, classes: tuple[Any, ...]
) -> dict[str, float]:
    if probabilities.shape[1] != len(classes):
        raise InvalidArtifact(f"the model scores {probabilities.shape[1]} classes, expected "
                              f"{len(classes)} ({list(classes)})")
    labels = np.asarray(classes)
    predicted = labels[np.argmax(probabilities, axis=1)]
    clipped = np.clip(probabilities, 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    binary = len(classes) == 2
    out = {
        "accuracy": float(skm.accuracy_score(y, predicted)),
        "log_loss": float(skm.log_loss(y, clipped, labels=labels)),
        "f1": float(skm.f1_score(y, predicted, pos_label=labels[-1], average="binary",
                                 zero_division=0.0)
                    if binary else skm.f1_score(y, predicted, average="macro",
                                                zero_division=0.0)),
    }
    if len(np.unique(y)) > 1:
        out["roc_auc"] = float(
            skm.roc_auc_score(y, probabilities[:, 1]) if binary else
            skm.roc_auc_score(y, clipped, multi_class="ovr", labels=labels))
    return out


def regression_metrics(y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    predicted = predictions.reshape(-1)
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y, predicted))),
        "mae": float(skm.mean_absolute_error(y, predicted)),
        "r2": float(skm.r2_score(y, predicted)),
    }


def evaluate(
    onnx_bytes: bytes, X: np.ndarray, y: np.ndarray, *, task: str,
    classes: tuple[Any, ...] = (0, 1), latency_rows: int = 200,
) -> Evaluation:
    """Score ``onnx_bytes`` on the holdout ``(X, y)``; ``InvalidArtifact`` when it cannot
    be loaded or scored."""
    scorer = OnnxScorer(onnx_bytes, task)
    try:
        scores = scorer.scores(X)
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise InvalidArtifact(f"onnxruntime failed on the holdout: {exc}") from exc
    metrics = (classification_metrics(y, scores, classes) if task == "classification"
               else regression_metrics(y, scores))
    return Evaluation(metrics, scorer.latency_p99_us(X, rows=latency_rows), scorer.size_bytes,
                      len(y))


def parity_max_abs_diff(
    onnx_bytes: bytes, X: np.ndarray, expected: np.ndarray, *, task: str, tolerance: float,
) -> float:
    """Max abs difference between onnxruntime's scores and the estimator's own
    (``expected``) on ``X``; ``ParityFailed`` when above ``tolerance`` or unscorable."""
    try:
        got = OnnxScorer(onnx_bytes, task).scores(X)
    except Exception as exc:
        raise ParityFailed(f"the converted model cannot be scored: {exc}") from exc
    if got.shape != expected.shape:
        raise ParityFailed(f"ONNX scores have shape {list(got.shape)}, the estimator's "
                           f"{list(expected.shape)}")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not diff <= tolerance:
        raise ParityFailed(f"ONNX parity failed: max abs difference {diff:.3g} > tolerance "
                           f"{tolerance:.3g} on {len(X)} holdout rows")
    return diff
