"""The demo's clients: a gateway process, open-loop traffic with delayed labels, and an
admin watcher. They talk to the gateway only over gRPC (our generated stubs), like any
user; nothing here reaches into the server.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from gateway.cli.lifecycle_cmds import step_summary
from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc, feedback_pb2_grpc, grpc_service_pb2_grpc
from gateway.pb import feedback_pb2 as fpb
from gateway.pb import grpc_service_pb2 as ipb
from lifecycle.drift import compare, profile_features
from lifecycle.synthetic import FraudGenerator

__all__ = ["GatewayProcess", "Served", "Traffic", "Watcher"]

FINAL = ("succeeded", "rejected", "failed")


class GatewayProcess:
    """``gateway serve`` in a child process on free ports (``--port-file``)."""

    def __init__(self, config: Path, data_dir: Path, *, log_level: str = "WARNING") -> None:
        self.data_dir = data_dir
        self.port_file = data_dir / "ports.json"
        self.log_path = data_dir / "gateway.log"
        self.args = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                     "--data-dir", str(data_dir), "--grpc-port", "0", "--http-port", "0",
                     "--admin-port", "0", "--port-file", str(self.port_file),
                     "--log-level", log_level]
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def start(self, timeout_s: float = 120.0) -> GatewayProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout_s
        while not self.port_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the gateway did not start in {timeout_s:g} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)
        self.ports = json.loads(self.port_file.read_text())
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def inference_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def admin_target(self) -> str:
        return f"127.0.0.1:{self.ports['admin']}"

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (a graceful drain: the log flushes, active runs are cancelled)."""
        if self.process is None or self.process.poll() is not None:
            return 0 if self.process is None else int(self.process.returncode)
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


@dataclass(frozen=True)
class Served:
    """One request as the client saw it: when the answer came (monotonic), whether it
    was sent after the shift, the version that served it (0 on failure), whether the
    predicted class matched the true one."""

    at: float
    shifted: bool
    version: int
    correct: bool
    ok: bool


@dataclass(order=True)
class _Due:
    due: float
    request_id: str = field(compare=False)
    label: int = field(compare=False)


class Traffic:
    """Open-loop requests at ``rate`` per second from ``FraudGenerator(seed)``, switched
    to the shifted world by ``shift()``; for a ``label_share`` of them the true label is
    sent through the FeedbackService ``label_delay_s`` after the answer (flipped for
    requests sent while ``poison`` is set: a broken labelling pipeline)."""

    def __init__(
        self, channel: grpc.Channel, *, model: str = "fraud", rate: float = 150.0,
        seed: int = 7, label_share: float = 0.6, label_delay_s: float = 1.0,
        input_shift: float = 1.0, concept_shift: float = 1.0, prefix: str = "demo",
        reference_s: float = 8.0,
    ) -> None:
        self._inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._feedback = feedback_pb2_grpc.FeedbackServiceStub(channel)
        self.model = model
        self.rate = rate
        self._generator = FraudGenerator(seed)
        self._rng = np.random.default_rng(seed + 1)
        self.label_share = label_share
        self.label_delay_s = label_delay_s
        self._knobs = (0.0, 0.0)
        self._shift_to = (input_shift, concept_shift)
        self._prefix = prefix
        self._reference_s = reference_s
        self.poison = False
        self.shifted_at: float | None = None
        self.shifted_wall_us: int | None = None
        self.started_at = 0.0
        self.served: list[Served] = []
        self.failures: list[str] = []
        self.labels_sent = 0
        self.labels_rejected = 0
        self._lock = threading.Lock()
        self._due: list[_Due] = []
        self._rows: deque[tuple[float, np.ndarray]] = deque()
        self._reference: list[np.ndarray] = []
        self._profiles: Any = None
        self._in_flight = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counter = itertools.count()

    # ------------------------------------------------------------------ control

    def start(self) -> Traffic:
        self.started_at = time.monotonic()
        for target, name in ((self._send_loop, "demo-traffic"), (self._label_loop, "demo-labels")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def shift(self) -> None:
        with self._lock:
            self._knobs = self._shift_to
            self.shifted_at = time.monotonic()
            self.shifted_wall_us = time.time_ns() // 1000

    def stop(self, drain_s: float = 15.0) -> None:
        """Stop sending; wait for the answers in flight and send the labels still due."""
        self._stop.set()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0 and not self._due:
                    break
            time.sleep(0.05)
        for thread in self._threads:
            thread.join(drain_s)

    # ---------------------------------------------------------------- requests

    def _send_loop(self) -> None:
        batch: Iterator[tuple[np.ndarray, int]] = iter(())
        knobs = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                current = self._knobs
            if current != knobs:
                knobs, batch = current, iter(())
            row = next(batch, None)
            if row is None:
                X, y = self._generator.sample(256, input_shift=knobs[0], concept_shift=knobs[1])
                batch = iter(zip(X, y.tolist(), strict=True))
                row = next(batch)
            self._send(row[0].reshape(1, -1), int(row[1]), knobs != (0.0, 0.0))
            next_at += 1.0 / self.rate
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            elif pause < -1.0:  # fell behind by a second: do not burst to catch up
                next_at = time.monotonic()

    def _send(self, x: np.ndarray, truth: int, shifted: bool) -> None:
        request_id = f"{self._prefix}-{next(self._counter)}"
        request = ipb.ModelInferRequest(model_name=self.model, id=request_id)
        request.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        labelled = bool(self._rng.random() < self.label_share)
        label = 1 - truth if self.poison else truth
        now = time.monotonic()
        with self._lock:
            self._in_flight += 1
            self._rows.append((now, x[0]))
            while self._rows and self._rows[0][0] < now - 15.0:
                self._rows.popleft()
            if now - self.started_at < self._reference_s and not shifted:
                self._reference.append(x[0])
        future = self._inference.ModelInfer.future(request, timeout=30)
        future.add_done_callback(
            lambda f: self._answered(f, request_id, truth, label if labelled else None, shifted))

    def _answered(self, future: Any, request_id: str, truth: int, label: int | None,
                  shifted: bool) -> None:
        now = time.monotonic()
        try:
            response = future.result()
        except grpc.RpcError as exc:
            with self._lock:
                self._in_flight -= 1
                self.failures.append(f"{request_id}: {exc.code().name}: {exc.details()}")
                self.served.append(Served(now, shifted, 0, False, False))
            return
        names = [o.name for o in response.outputs]
        predicted = int(np.frombuffer(response.raw_output_contents[names.index("label")],
                                      dtype=np.int64)[0])
        version = int(response.model_version or 0)
        with self._lock:
            self._in_flight -= 1
            self.served.append(Served(now, shifted, version, predicted == truth, True))
            if label is not None:
                heapq.heappush(self._due, _Due(now + self.label_delay_s, request_id, label))

    # ------------------------------------------------------------------ labels

    def _label_loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            now = time.monotonic()
            batch: list[_Due] = []
            with self._lock:
                while self._due and (self._due[0].due <= now or stopping):
                    batch.append(heapq.heappop(self._due))
                idle = self._in_flight == 0 and not self._due
            if batch:
                self._send_labels(batch)
            if stopping and idle:
                return
            time.sleep(0.1)

    def _send_labels(self, batch: list[_Due]) -> None:
        messages = (fpb.Feedback(model=self.model, request_id=d.request_id,
                                 class_label=d.label) for d in batch)
        try:
            summary = self._feedback.StreamFeedback(messages, timeout=30)
        except grpc.RpcError as exc:
            with self._lock:
                self.labels_rejected += len(batch)
                self.failures.append(f"feedback: {exc.code().name}: {exc.details()}")
            return
        with self._lock:
            self.labels_sent += int(summary.accepted)
            self.labels_rejected += int(summary.rejected)

    # ----------------------------------------------------------------- numbers

    def snapshot(self) -> list[Served]:
        with self._lock:
            return list(self.served)

    def drift(self, window_s: float = 5.0) -> tuple[float, int, int] | None:
        """PSI of the last ``window_s`` of inputs against the first ``reference_s`` of
        traffic: (largest per-feature PSI, features above 0.2, features); None until the
        reference is complete."""
        now = time.monotonic()
        with self._lock:
            if now - self.started_at < self._reference_s or len(self._reference) < 100:
                return None
            if self._profiles is None:
                self._profiles = profile_features(np.asarray(self._reference, np.float64))
            recent = [x for t, x in self._rows if t >= now - window_s]
        if len(recent) < 50:
            return None
        report = compare(self._profiles, np.asarray(recent, np.float64), metric="psi",
                         threshold=0.2)
        return report.score(), len(report.drifted), len(report.features)


class Watcher:
    """Polls the admin API (``every_s``) and turns what changed into timeline lines:
    runs starting and their steps, canary steps, promotions, rejections."""

    def __init__(self, channel: grpc.Channel, token: str, *, model: str = "fraud",
                 emit: Callable[[str], None], every_s: float = 1.0) -> None:
        self._admin = admin_pb2_grpc.AdminServiceStub(channel)
        self._auth = (("authorization", f"Bearer {token}"),)
        self.model = model
        self._emit = emit
        self._every_s = every_s
        self.production: int | None = None
        self.production_changed_at: float | None = None
        self.runs: dict[int, apb.Run] = {}
        self.rejected: set[int] = set()
        self.errors = 0
        self._steps_seen: set[tuple[int, int]] = set()
        self._last_event = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call(self, method: str, request: Any) -> Any:
        return getattr(self._admin, method)(request, metadata=self._auth, timeout=30)

    def start(self) -> Watcher:
        model = self.call("GetModel", apb.GetModelRequest(name=self.model))
        self.production = int(model.aliases.get("production", 0)) or None
        events = self.call("ListEvents", apb.ListEventsRequest(model=self.model, limit=1))
        self._last_event = max((e.id for e in events.events), default=0)
        self._thread = threading.Thread(target=self._loop, name="demo-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def run_snapshot(self) -> dict[int, apb.Run]:
        with self._lock:
            return dict(self.runs)

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.poll()
            except grpc.RpcError as exc:
                self.errors += 1
                self._emit(f"admin poll failed: {exc.code().name}")

    def poll(self) -> None:
        for r in reversed(self.call("ListRuns", apb.ListRunsRequest(model=self.model,
                                                                     limit=10)).runs):
            known = self.runs.get(r.id)
            if known is None:
                self._emit(f"run {r.id} started - trigger {r.trigger}: {r.reason}")
            if known is None or known.status not in FINAL:
                full = self.call("GetRun", apb.GetRunRequest(id=r.id))
                self._steps(full)
                if full.status in FINAL:
                    end = f"run {r.id} {full.status}"
                    if full.outcome:
                        end += f" ({full.outcome})"
                    if full.error:
                        end += f": {full.error.splitlines()[0]}"
                    self._emit(end)
                with self._lock:
                    self.runs[r.id] = full
        events = self.call("ListEvents", apb.ListEventsRequest(model=self.model, limit=50))
        for e in sorted(events.events, key=lambda e: e.id):
            if e.id > self._last_event:
                self._last_event = e.id
                self._event(e)

    def _steps(self, run: apb.Run) -> None:
        for step in run.steps:
            key = (run.id, step.position)
            if step.status != "running" and key not in self._steps_seen:
                self._steps_seen.add(key)
                self._emit(f"run {run.id} {step.name}: {step.status} {step_summary(step)}")

    def _event(self, e: apb.Event) -> None:
        detail = json_format.MessageToDict(e.detail)
        version = e.version if e.HasField("version") else None
        if e.action == "canary.start":
            self._emit(f"canary of version {version} started (champion "
                       f"{int(detail.get('champion', 0))})")
        elif e.action == "canary.advance":
            self._emit(f"canary of version {version}: {detail.get('from_share', 0):g}% -> "
                       f"{detail.get('to_share', 0):g}%")
        elif e.action in ("canary.promoted", "canary.aborted"):
            self._emit(f"canary of version {version} {e.action.split('.')[1]}: "
                       f"{detail.get('reason', '')}")
        elif e.action == "version.status":
            after = json_format.MessageToDict(e.after) if e.HasField("after") else ""
            if after == "rejected" and version is not None:
                self.rejected.add(int(version))
            self._emit(f"version {version} is now {after}"
                       + (f": {detail['reason']}" if detail.get("reason") else ""))
        elif e.action in ("alias.set", "alias.rollback") and detail.get("alias") == "production":
            with self._lock:
                self.production = version
                self.production_changed_at = time.monotonic()
            self._emit(f"production -> version {version}")
