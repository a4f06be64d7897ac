"""Per (model, version) inference statistics, shaped like Triton's ModelStatistics.

Mutated only on the event loop thread (or under the GIL in one call), read by the servicer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStats:
    """One executed batch size's runs (Triton's ``InferBatchStatistics``)."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStats:
    model: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    # Per executed batch size, for versions with dynamic batching (their executions are
    # counted by ``record_batch``, not per request).
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_success(
        self, *, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int,
        batch: int, executions: int = 1,
    ) -> None:
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)
        self.inference_count += batch
        self.execution_count += executions
        self.last_inference_ms = int(time.time() * 1000)

    def record_batch(self, size: int, *, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One session run of ``size`` rows made by the dynamic batcher."""
        stats = self.batches.get(size)
        if stats is None:
            stats = self.batches[size] = BatchStats()
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(infer_ns)
        stats.compute_output.add(output_ns)
        self.execution_count += 1

    def record_failure(self, total_ns: int) -> None:
        self.fail.add(total_ns)
        self.last_inference_ms = int(time.time() * 1000)


class StatsBook:
    """Statistics that outlive a version's load, so a reload keeps counting."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], VersionStats] = {}

    def get(self, model: str, version: str) -> VersionStats:
        key = (model, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = VersionStats(model, version)
        return stats

    def select(self, model: str = "", version: str = "") -> list[VersionStats]:
        return [
            s for (m, v), s in sorted(self._stats.items())
            if (not model or m == model) and (not version or v == version)
        ]
