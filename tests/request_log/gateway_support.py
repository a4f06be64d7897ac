"""Clients shared by the request-log tests against real gateways: inference with known
tensors, feedback, admin queries, metrics, and a load generator that records when each
response arrived."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc, feedback_pb2_grpc
from gateway.pb import feedback_pb2 as fpb
from gateway.pb import grpc_service_pb2 as ipb
from gateway.pb import grpc_service_pb2_grpc as ipb_grpc
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

TOKEN = "ops-secret"
AUTH_CONFIG = f'[auth.tokens.ops]\ntoken = "{TOKEN}"\nrole = "operator"\n'
FEATURES = 20


def features(i: int, rows: int = 1) -> np.ndarray:
    """Distinct, reproducible inputs per request (NaN and -0.0 included for byte checks)."""
    x = np.random.default_rng(i).normal(size=(rows, FEATURES)).astype(np.float32)
    x[0, 0] = np.float32(i)
    if i % 7 == 3:
        x[0, 1] = np.float32("nan")
        x[0, 2] = np.float32(-0.0)
    return x


def infer_request(model: str, request_id: str, x: np.ndarray) -> ipb.ModelInferRequest:
    request = ipb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


class Clients:
    """Stubs over one channel to the inference port and one to the admin port."""

    def __init__(self, grpc_address: str, admin_address: str) -> None:
        self._channels = [grpc.insecure_channel(grpc_address),
                          grpc.insecure_channel(admin_address)]
        self.inference = ipb_grpc.GRPCInferenceServiceStub(self._channels[0])
        self.feedback = feedback_pb2_grpc.FeedbackServiceStub(self._channels[0])
        self.admin = admin_pb2_grpc.AdminServiceStub(self._channels[1])
        self.auth = (("authorization", f"Bearer {TOKEN}"),)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def infer(self, model: str, request_id: str, x: np.ndarray,
              metadata: tuple[tuple[str, str], ...] = ()) -> ipb.ModelInferResponse:
        return self.inference.ModelInfer(infer_request(model, request_id, x),
                                         metadata=metadata, timeout=30)

    def label(self, model: str, request_id: str, **label: Any) -> fpb.SubmitFeedbackResponse:
        return self.feedback.SubmitFeedback(
            fpb.Feedback(model=model, request_id=request_id, **label), timeout=30)

    def query(self, model: str, **fields: Any) -> list[apb.LoggedRequest]:
        return list(self.admin.QueryRequests(apb.QueryRequestsRequest(model=model, **fields),
                                             metadata=self.auth, timeout=60))

    def unmatched(self, model: str) -> list[apb.UnmatchedFeedback]:
        return list(self.admin.ListUnmatchedFeedback(
            apb.ListUnmatchedFeedbackRequest(model=model), metadata=self.auth,
            timeout=30).feedback)

    def purge(self, model: str, **cutoff: Any) -> apb.PurgeRequestsResponse:
        return self.admin.PurgeRequests(apb.PurgeRequestsRequest(model=model, **cutoff),
                                        metadata=self.auth, timeout=60)


def metrics(http_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_request_id(records: Iterable[apb.LoggedRequest]) -> dict[str, list[apb.LoggedRequest]]:
    found: dict[str, list[apb.LoggedRequest]] = {}
    for record in records:
        found.setdefault(record.request_id, []).append(record)
    return found


@dataclass
class Load:
    """Requests with unique ids from a few threads until stopped; records when each
    response arrived (``time.monotonic()``, shared by every process on the machine)."""

    clients: Clients
    model: str
    prefix: str
    threads: int = 4
    limit: int | None = None
    received: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: Iterator[int] = field(default_factory=lambda: iter(range(10**9)))

    def start(self) -> Load:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                i = next(self._next)
            if self.limit is not None and i >= self.limit:
                return
            request_id = f"{self.prefix}-{i}"
            try:
                self.clients.infer(self.model, request_id, features(i))
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                self.failed_at.append(time.monotonic())
                self.failures.append(f"{request_id}: {exc.code().name}: {exc.details()}")
                continue
            self.received[request_id] = time.monotonic()

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.received)} responses within {timeout}s; "
                                     f"failures: {self.failures[:5]}")
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)


def flushed(gateway: InProcessGateway, timeout: float = 30) -> None:
    assert gateway.app.request_log is not None
    assert gateway.app.request_log.flush(timeout)


def assert_an_outage_loses_nothing(gateway: InProcessGateway, clients: Clients, model: str,
                                   outage: AbstractContextManager[object]) -> None:
    """Inferences on ``model`` from three threads through ``outage`` (the database refusing
    the log's writes): none fails and at least 200 are answered during it, while the log's
    inserts fail and spill to the journal; afterwards every answered request is stored
    exactly once, replayed from the journal."""
    registry = gateway.app.metrics.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    failed = value("gateway_request_log_failed_inserts_total")
    spilled = value("gateway_request_log_spilled_total", kind="request")
    load = Load(clients, model, "outage", threads=3).start()
    try:
        load.wait_for(100)
        with outage:
            started_at = len(load.received)
            wait_until(lambda: value("gateway_request_log_failed_inserts_total") > failed
                       and value("gateway_request_log_spilled_total", kind="request") > spilled
                       and len(load.received) > started_at + 200, 60,
                       "inserts failing, batches spilling and serving going on")
            during = len(load.received) - started_at
        load.wait_for(len(load.received) + 100)
    finally:
        load.stop()
    assert load.failures == []
    assert during >= 200
    flushed(gateway, timeout=60)
    records = clients.query(model, omit_payload=True)
    assert len(records) == len({r.record_id for r in records})
    assert sorted(r.request_id for r in records) == sorted(load.received)
    assert value("gateway_request_log_replayed_total", kind="request") > 0
