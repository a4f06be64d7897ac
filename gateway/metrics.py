"""Prometheus metrics, in a registry owned by the app (no import-time globals).

Label children are resolved once per loaded version, not per request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
UNKNOWN_MODEL = "_unknown"


class VersionMetrics:
    """Pre-resolved metric children for one (model, version)."""

    __slots__ = ("_parent", "model", "version", "_ok", "_latency", "_codes")

    def __init__(self, parent: GatewayMetrics, model: str, version: str) -> None:
        self._parent = parent
        self.model = model
        self.version = version
        self._ok = parent.requests.labels(model, version, "OK")
        self._latency = parent.latency.labels(model, version)
        self._codes: dict[str, Counter] = {}

    def success(self, seconds: float) -> None:
        self._ok.inc()
        self._latency.observe(seconds)

    def failure(self, code: str, seconds: float) -> None:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = self._parent.requests.labels(
                self.model, self.version, code
            )
        counter.inc()
        self._latency.observe(seconds)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "Inference requests by model, served version and gRPC status.",
            ["model", "version", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_latency_seconds", "Inference latency inside the server.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
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
        self._versions: dict[tuple[str, str], VersionMetrics] = {}

    def version(self, model: str, version: str) -> VersionMetrics:
        key = (model, version)
        found = self._versions.get(key)
        if found is None:
            found = self._versions[key] = VersionMetrics(self, model, version)
        return found

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
