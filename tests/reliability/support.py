"""Clients for the fault scenarios: a closed-loop load that records every request's fate,
and a readiness watcher; both time-stamp with ``time.monotonic()`` (shared by every
process on the machine), so their records line up with a signal sent by the test."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper

from gateway.pb import grpc_service_pb2 as pb
from gateway.pb import grpc_service_pb2_grpc as pb_grpc
from gateway.request_log.journal import Journal
from lifecycle.db import Database, make_engine
from lifecycle.request_store import RequestStore
from tests.support.waiting import wait_until


def spin_model(width: int = 64) -> bytes:
    """Inputs ``x`` FP32 [-1, width] and ``n`` INT64 scalar; output ``y`` = ``n`` rounds of
    tanh(y @ W) from ``x``. Its running time is whatever ``n`` asks (warm-up feeds zeros:
    no rounds), so a test can hold a request in flight for as long as it needs."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["v_in", "w"], ["mm"]),
         helper.make_node("Tanh", ["mm"], ["v_out"])],
        "spin_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["batch", width])])
    w = np.random.default_rng(0).standard_normal((width, width)) / np.sqrt(width)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["cond"],
                          value=numpy_helper.from_array(np.array(True))),
         helper.make_node("Loop", ["n", "cond", "x"], ["y"], body=body)],
        "spin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def spin_request(rounds: int, request_id: str) -> pb.ModelInferRequest:
    request = make_request("spin", "x", 4, 64, request_id)
    request.inputs.add(name="n", datatype="INT64", shape=[])
    request.raw_input_contents.append(np.int64(rounds).tobytes())
    return request


@dataclass(frozen=True)
class Outcome:
    request_id: str
    sent: float
    done: float
    code: grpc.StatusCode
    version: str = ""
    details: str = ""


def make_request(model: str, input_name: str, rows: int, features: int,
                 request_id: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    x = np.random.default_rng(len(request_id)).normal(size=(rows, features)).astype(np.float32)
    request.inputs.add(name=input_name, datatype="FP32", shape=[rows, features])
    request.raw_input_contents.append(x.tobytes())
    return request


@dataclass
class ClosedLoad:
    """``threads`` clients, each sending its next request as soon as the last one ended,
    over ``channels`` connections, until ``stop()``. After a failure a client pauses a few
    milliseconds so a refusing server does not turn the loop into a busy spin; with
    ``until_refused`` it leaves instead (a client failing over to another replica)."""

    address: str
    build: Callable[[str], pb.ModelInferRequest]
    prefix: str
    threads: int = 6
    channels: int = 2
    until_refused: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _channels: list[grpc.Channel] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ClosedLoad:
        self._channels = [grpc.insecure_channel(self.address, options=[
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(self.channels)]
        for i in range(self.threads):
            stub = pb_grpc.GRPCInferenceServiceStub(self._channels[i % self.channels])
            worker = threading.Thread(target=self._run, args=(stub,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        while not self._stop.is_set():
            with self._lock:
                request_id = f"{self.prefix}-{next(self._ids)}"
            request = self.build(request_id)
            sent = time.monotonic()
            try:
                response = stub.ModelInfer(request, timeout=30)
            except grpc.RpcError as exc:
                self.outcomes.append(Outcome(request_id, sent, time.monotonic(), exc.code(),
                                             details=exc.details() or ""))
                if self.until_refused:
                    return
                self._stop.wait(0.005)
                continue
            self.outcomes.append(Outcome(request_id, sent, time.monotonic(),
                                         grpc.StatusCode.OK, response.model_version))

    def ok(self) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.code == grpc.StatusCode.OK]

    def wait_for(self, predicate: Callable[[list[Outcome]], bool], timeout: float = 60,
                 what: str = "load condition") -> None:
        try:
            wait_until(lambda: predicate(list(self.outcomes)), timeout, what, interval=0.01)
        except AssertionError as exc:
            codes = sorted({o.code.name for o in self.outcomes})
            raise AssertionError(f"{exc} ({len(self.outcomes)} outcomes, codes {codes})"
                                 ) from None

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)
        for channel in self._channels:
            channel.close()


@dataclass
class ReadinessWatch:
    """The gRPC health Watch stream of the whole server (service ``""``): records each
    status pushed with its arrival time. With ``hang_up`` it ends the call once
    NOT_SERVING arrives (a held stream would otherwise use the whole shutdown grace)."""

    address: str
    hang_up: bool = True
    statuses: list[tuple[float, str]] = field(default_factory=list)
    ended: str = ""
    _thread: threading.Thread | None = None

    def start(self) -> ReadinessWatch:
        self._channel = grpc.insecure_channel(self.address)
        self._call = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service=""))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for response in self._call:
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                self.statuses.append((time.monotonic(), name))
                if name == "NOT_SERVING" and self.hang_up:
                    self._call.cancel()
                    return
        except grpc.RpcError as exc:
            self.ended = exc.code().name

    def first(self, status: str) -> float | None:
        return next((t for t, s in self.statuses if s == status), None)

    def close(self) -> None:
        if self._thread is None:
            return
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


def logged_request_ids(data_dir: Path, *models: str) -> list[str]:
    """The request ids in the request log's database, read after the gateway exited."""
    database = Database(make_engine(f"sqlite:///{data_dir / 'gateway.db'}"))
    try:
        store = RequestStore(database)
        return [r.request_id for model in models for r in store.query_requests(model)]
    finally:
        database.close()


def journal_backlog(journal_dir: Path) -> int:
    """Records in the request log's journal past its checkpoint (not yet in the database)."""
    journal = Journal(journal_dir, segment_bytes=1 << 20, budget_bytes=1 << 30)
    try:
        return journal.open().pending_frames
    finally:
        journal.close(trim=False)
