"""onnxruntime sessions: one per loaded (model, version), with load-time tables.

Everything a request needs to look up (input specs, dtypes, output names) is computed here,
once, so the per-request path only does dict hits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from gateway.datatypes import ORT_TO_V2, V2_TO_NUMPY
from gateway.errors import ModelLoadError
from gateway.settings import RuntimeOptions
from lifecycle.domain import Signature, TensorSpec

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class WarmupReport:
    iterations: int
    p50_us: float
    p99_us: float


class OnnxModel:
    """A loaded ONNX model. ``run`` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, data: bytes, options: RuntimeOptions) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = _OPTIMIZATION[options.graph_optimization]
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                data, sess_options=so, providers=list(options.execution_providers)
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelLoadError(f"onnxruntime cannot load the model: {exc}") from exc
        self.inputs: dict[str, InputSpec] = {}
        for node in self._session.get_inputs():
            self.inputs[node.name] = self._spec(node, "input")
        self.outputs: dict[str, str] = {}
        self.output_shapes: dict[str, tuple[int, ...]] = {}
        for node in self._session.get_outputs():
            spec = self._spec(node, "output")
            self.outputs[spec.name] = spec.datatype
            self.output_shapes[spec.name] = spec.shape
        self.output_names: list[str] = list(self.outputs)
        self.signature = Signature(
            inputs=tuple(TensorSpec(s.name, s.datatype, s.shape) for s in self.inputs.values()),
            outputs=tuple(
                TensorSpec(n, self.outputs[n], self.output_shapes[n]) for n in self.output_names
            ),
        )
        self.string_inputs = frozenset(n for n, s in self.inputs.items() if s.datatype == "BYTES")
        self.first_dim_is_batch = all(
            s.shape[:1] == (-1,) for s in self.signature.inputs + self.signature.outputs
        )

    @staticmethod
    def _spec(node: ort.NodeArg, kind: str) -> InputSpec:
        datatype = ORT_TO_V2.get(node.type)
        if datatype is None:
            raise ModelLoadError(f"{kind} '{node.name}' has unsupported type {node.type}")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
        return InputSpec(node.name, datatype, shape, V2_TO_NUMPY[datatype])

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        return self._session.run(output_names, feeds)  # type: ignore[no-any-return]

    def sample_feeds(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Inputs of the right types and shapes (dynamic dims set to ``batch``) for warm-up."""
        feeds = {}
        for spec in self.inputs.values():
            shape = tuple(batch if d < 0 else d for d in spec.shape)
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return feeds

    def warm_up(self, iterations: int, *, timed: int = 200, budget_s: float = 1.0) -> WarmupReport:
        """Run the model ``iterations`` times untimed (first runs allocate and are slow),
        then up to ``timed`` runs within ``budget_s`` to measure its steady latency.

        Raises ``ModelLoadError`` if it cannot run.
        """
        feeds = self.sample_feeds()
        timings: list[float] = []
        try:
            for _ in range(iterations):
                self._session.run(self.output_names, feeds)
            stop_at = time.monotonic() + budget_s
            while len(timings) < max(timed, 1) and (not timings or time.monotonic() < stop_at):
                start = time.perf_counter_ns()
                self._session.run(self.output_names, feeds)
                timings.append((time.perf_counter_ns() - start) / 1000)
        except Exception as exc:
            raise ModelLoadError(f"warm-up failed: {exc}") from exc
        timings.sort()
        return WarmupReport(
            iterations=iterations + len(timings),
            p50_us=timings[len(timings) // 2],
            p99_us=timings[min(len(timings) - 1, int(len(timings) * 0.99))],
        )
