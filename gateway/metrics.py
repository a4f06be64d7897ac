"""Prometheus metrics, in a registry owned by the app (no import-time globals).

The per-request counters are plain integers on the event loop thread, turned into
Prometheus families only when ``/metrics`` is scraped (on the same thread): a request pays
a bisect and two increments instead of prometheus-client's locked child updates.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
UNKNOWN_MODEL = "_unknown"


class VersionMetrics:
    """Request counts by status and a latency histogram for one (model, version).

    Not thread-safe: updated and read on the event loop thread only.
    """

    __slots__ = ("model", "version", "codes", "buckets", "latency_sum")

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.codes: dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def success(self, seconds: float) -> None:
        codes = self.codes
        codes["OK"] = codes.get("OK", 0) + 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def failure(self, code: str, seconds: float) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class _RequestCollector(Collector):
    def __init__(self, versions: dict[tuple[str, str], VersionMetrics]) -> None:
        self._versions = versions

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gateway_requests", "Inference requests by model, served version and gRPC status.",
            labels=["model", "version", "code"],
        )
        latency = HistogramMetricFamily(
            "gateway_request_latency_seconds", "Inference latency inside the server.",
            labels=["model", "version"],
        )
        for metrics in list(self._versions.values()):
            for code, count in list(metrics.codes.items()):
                requests.add_metric([metrics.model, metrics.version, code], count)
            cumulative, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), metrics.buckets,
                                    strict=True):
                running += count
                cumulative.append((repr(bound) if bound != float("inf") else "+Inf", running))
            latency.add_metric([metrics.model, metrics.version], cumulative,
                               metrics.latency_sum)
        yield requests
        yield latency


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._versions: dict[tuple[str, str], VersionMetrics] = {}
        self.registry.register(_RequestCollector(self._versions))
        self.inflight = Gauge(
            "gateway_inflight_requests", "Inference requests in flight per model.", ["model"],
            registry=self.registry,
        )
        self.model_loads = Counter(
            "gateway_model_loads", "Model version loads by result (ok, failed).",
            ["model", "result"], registry=self.registry,
        )
        self.loaded_versions = Gauge(
            "gateway_loaded_versions", "Versions loaded and ready per model.", ["model"],
            registry=self.registry,
        )

    def version(self, model: str, version: str) -> VersionMetrics:
        key = (model, version)
        found = self._versions.get(key)
        if found is None:
            found = self._versions[key] = VersionMetrics(model, version)
        return found

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
