"""Cheap in-process counters per (model, experiment, version): what each arm of a traffic
experiment served here — requests, errors and a small latency histogram for p50/p99.

Mutated on the event loop thread only (the data plane); read by the admin service on the
same loop. The canary's guards read the request log instead (shared by every replica);
these counters are what ``gateway traffic show`` reports of this process.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["ArmCounter", "ArmStatsBook", "BUCKET_BOUNDS_US"]

# Geometric latency buckets from 10 µs to ~30 s (ratio 1.2): a percentile is reported
# as its bucket's upper bound, within 20% of the true value.
BUCKET_BOUNDS_US: tuple[int, ...] = tuple(int(10 * 1.2**i) + 1 for i in range(83))


@dataclass(slots=True)
class ArmCounter:
    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKET_BOUNDS_US) + 1))

    def success(self, latency_us: int) -> None:
        self.requests += 1
        self.buckets[bisect_left(BUCKET_BOUNDS_US, latency_us)] += 1

    def failure(self) -> None:
        self.requests += 1
        self.errors += 1

    def percentile_ms(self, q: float) -> float:
        """The ``q`` quantile (0..1) of successful requests' latency in ms; 0 without any."""
        total = sum(self.buckets)
        if not total:
            return 0.0
        rank = q * total
        running = 0
        for index, count in enumerate(self.buckets):
            running += count
            if running >= rank and count:
                bound = BUCKET_BOUNDS_US[min(index, len(BUCKET_BOUNDS_US) - 1)]
                return bound / 1000.0
        return BUCKET_BOUNDS_US[-1] / 1000.0


class ArmStatsBook:
    """Counters keyed by (model, experiment id, version); a model keeps only its current
    experiment's counters (a new experiment id drops the old ones: bounded memory)."""

    def __init__(self) -> None:
        self._current: dict[str, str] = {}
        self._arms: dict[tuple[str, str, int], ArmCounter] = {}

    def counter(self, model: str, experiment_id: str, version: int) -> ArmCounter:
        key = (model, experiment_id, version)
        found = self._arms.get(key)
        if found is None:
            if self._current.get(model, experiment_id) != experiment_id:
                old = self._current[model]
                for stale in [k for k in self._arms if k[0] == model and k[1] == old]:
                    del self._arms[stale]
            self._current[model] = experiment_id
            found = self._arms[key] = ArmCounter()
        return found

    def snapshot(self, model: str, experiment_id: str) -> dict[int, ArmCounter]:
        return {k[2]: c for k, c in self._arms.items() if k[0] == model and k[1] == experiment_id}
