"""Helpers of the lifecycle-loop tests: a settable clock, logged traffic, a deployer."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import onnxruntime as ort

from lifecycle.deployer import ServingState
from lifecycle.domain import PRODUCTION, AliasChange, Signature
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.request_records import (
    FeedbackEntry,
    Label,
    RequestEntry,
    Tensor,
    encode_tensors,
)
from lifecycle.request_store import RequestStore

MODEL = "fraud"


class ManualClock:
    """Stands still until advanced; thread-safe."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)

    def us(self) -> int:
        return int(self().timestamp() * 1e6)


def predict(onnx_bytes: bytes, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of the fraud model for the rows of ``X``."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(["label", "probabilities"], {"features": X})
    return labels, probabilities


def log_traffic(
    requests: RequestStore, X: np.ndarray, y: np.ndarray | None, *, end_us: int,
    step_us: int = 1000, version: int = 1, onnx_bytes: bytes | None = None,
    labels: np.ndarray | None = None, shadow_of: dict[str, Any] | None = None,
    model: str = MODEL,
) -> list[str]:
    """Log one primary request per row of ``X`` (oldest first, the last at ``end_us -
    step_us``), served by ``version``, with outputs from ``onnx_bytes`` (zeros without),
    and feedback ``y`` (None: no labels). Returns the request ids."""
    n = len(X)
    if onnx_bytes is not None:
        predicted, probabilities = predict(onnx_bytes, X)
    else:
        predicted = np.zeros(n, dtype=np.int64) if labels is None else labels
        probabilities = np.zeros((n, 2), dtype=np.float32)
    start = end_us - n * step_us
    entries, feedback, ids = [], [], []
    for i in range(n):
        ts = start + i * step_us
        request_id = uuid.uuid4().hex
        ids.append(request_id)
        entries.append(RequestEntry(
            record_id=uuid.uuid4().hex, request_id=request_id, model=model, version=version,
            timestamp_us=ts, latency_us=100, status="OK",
            inputs=encode_tensors([Tensor.from_array("features", "FP32", X[i:i + 1])]),
            outputs=encode_tensors([
                Tensor.from_array("label", "INT64", predicted[i:i + 1]),
                Tensor.from_array("probabilities", "FP32", probabilities[i:i + 1])]),
        ))
        if y is not None:
            feedback.append(FeedbackEntry(
                feedback_id=uuid.uuid4().hex, request_id=request_id, model=model,
                label=Label.of(int(y[i])), timestamp_us=ts, received_at_us=ts + 1))
    requests.insert(entries, feedback)
    return ids


def log_shadow(
    requests: RequestStore, request_ids: list[str], X: np.ndarray, predicted: np.ndarray, *,
    end_us: int, version: int, step_us: int = 1000, model: str = MODEL,
) -> None:
    """Shadow records of ``version`` for ``request_ids`` with the given predicted labels."""
    start = end_us - len(request_ids) * step_us
    entries = [RequestEntry(
        record_id=uuid.uuid4().hex, request_id=rid, model=model, version=version,
        timestamp_us=start + i * step_us + 1, latency_us=100, status="OK",
        inputs=encode_tensors([Tensor.from_array("features", "FP32", X[i:i + 1])]),
        outputs=encode_tensors([
            Tensor.from_array("label", "INT64", predicted[i:i + 1]),
            Tensor.from_array("probabilities", "FP32", np.zeros((1, 2), np.float32))]),
        arm="shadow", shadow=True) for i, rid in enumerate(request_ids)]
    requests.insert(entries)


class AliasDeployer:
    """A ``lifecycle.deployer.Deployer`` double that does to the database what the
    gateway's promotion does (move ``production``, end the experiment) and records calls.
    """

    def __init__(self, registry: Registry, policies: PolicyStore) -> None:
        self.registry = registry
        self.policies = policies
        self.promoted: list[tuple[str, int]] = []

    async def add_model(self, name: str, signature: Signature) -> Any:
        return None

    async def promote(self, model: str, version: int, *, actor: str) -> int | None:
        self.promoted.append((model, version))
        change = self.registry.set_alias(model, PRODUCTION, version, actor=actor)
        self.policies.end_experiment(model, actor=actor, reason=f"promoted {version}")
        return change.previous

    async def rollback(self, model: str, *, actor: str) -> AliasChange:
        return self.registry.rollback(model, actor=actor)

    async def load_version(self, model: str, version: int, *, actor: str) -> Any:
        return None

    async def unload_version(self, model: str, version: int, *, actor: str) -> None:
        return None

    def serving_state(self, model: str) -> ServingState:
        aliases = self.registry.get_aliases(model)
        return ServingState(model, production=aliases.get(PRODUCTION))
