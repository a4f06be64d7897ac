"""The serving path of one inference: admission → resolve → validate → run → respond → log.

Knows no protobuf. Fast models run inline on the event loop (a thread hop costs more than
they do); the rest run in the bounded inference pool. Every request that reached a model
version is handed to the request log (a reference to its tensors, no copy, never awaited),
failures with their status code.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor

import numpy as np

from gateway.arm_stats import ArmStatsBook
from gateway.errors import DeadlineExceeded, InferenceFailed, InvalidInput, Overloaded
from gateway.metrics import UNKNOWN_MODEL, GatewayMetrics
from gateway.model_manager import LoadedVersion, ModelManager, ServedModel
from gateway.request_log import RequestLog, RequestRecord
from gateway.routing import PINNED_ARM, Route, extract_routing_key
from gateway.runtime import OnnxModel
from gateway.shadow import ShadowJob, ShadowRunner
from gateway.types import InferOutput, InferRequest, InferResponse

log = logging.getLogger("gateway.dataplane")


def build_feeds(onnx: OnnxModel, model: str, request: InferRequest) -> dict[str, np.ndarray]:
    """Check the inputs against the signature; return the feed dict. Raises InvalidInput."""
    specs = onnx.inputs
    feeds: dict[str, np.ndarray] = {}
    for item in request.inputs:
        spec = specs.get(item.name)
        if spec is None:
            raise InvalidInput(
                f"unexpected input '{item.name}' for model '{model}': expected inputs "
                f"{sorted(specs)}"
            )
        if item.name in feeds:
            raise InvalidInput(f"input '{item.name}' is given more than once")
        if item.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{item.name}': expected datatype {spec.datatype}, got {item.datatype}"
            )
        shape = item.array.shape
        if len(shape) != len(spec.shape):
            raise InvalidInput(
                f"input '{item.name}': expected shape {list(spec.shape)} (rank "
                f"{len(spec.shape)}), got {list(shape)}"
            )
        for want, got in zip(spec.shape, shape, strict=True):
            if want >= 0 and want != got:
                raise InvalidInput(
                    f"input '{item.name}': expected shape {list(spec.shape)}, got {list(shape)}"
                )
        array = item.array
        if item.name in onnx.string_inputs:
            array = np.vectorize(_as_str, otypes=[object])(array) if array.size else array
        feeds[item.name] = array
    if len(feeds) != len(specs):
        missing = sorted(set(specs) - set(feeds))
        raise InvalidInput(f"model '{model}' is missing input(s) {missing}")
    return feeds


def _as_str(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def output_names(onnx: OnnxModel, model: str, requested: list[str]) -> list[str]:
    if not requested:
        return onnx.output_names
    for name in requested:
        if name not in onnx.outputs:
            raise InvalidInput(
                f"requested output '{name}' is not an output of model '{model}': expected one "
                f"of {onnx.output_names}"
            )
    return requested


def _no_status(exc: BaseException) -> str:
    return "UNKNOWN"


class DataPlane:
    """``request_log`` (optional) receives a record of every request that reached a
    version; ``status_name`` names the status a failure will get (the gRPC layer's table,
    injected so that the core imports no gRPC)."""

    def __init__(
        self, manager: ModelManager, pool: Executor, metrics: GatewayMetrics, *,
        request_log: RequestLog | None = None,
        status_name: Callable[[BaseException], str] = _no_status,
        shadows: ShadowRunner | None = None,
        arm_stats: ArmStatsBook | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._manager = manager
        self._pool = pool
        self._metrics = metrics
        self._request_log = request_log
        self._status_name = status_name
        self._shadows = shadows
        self.arm_stats = arm_stats if arm_stats is not None else ArmStatsBook()
        # Used only on the event loop thread (the split's draws).
        self._rng = rng if rng is not None else random.Random()

    async def infer(self, request: InferRequest, started_ns: int,
                    metadata: Mapping[str, str] | None = None,
                    routing_header: str | None = None) -> InferResponse:
        """Serve one request. Accounting of failures is the caller's (see ``account_failure``);
        logging them is this method's. ``metadata`` is the client metadata to log (already
        whitelisted); ``routing_header`` the ``x-routing-key`` metadata value, if sent.

        The model's routing table picks the version (a pinned ``model_version`` must be in
        the serving set: ``VersionNotFound``); shadows of the route get a copy after the
        primary answered, through the bounded shadow queue."""
        key = (extract_routing_key(request.parameters, routing_header)
               if request.parameters or routing_header is not None else None)
        served, route = self._manager.route(request.model, request.version, key, self._rng)
        loaded = route.handle
        counter = (None if route.arm == PINNED_ARM
                   else self.arm_stats.counter(served.name, route.experiment_id, route.version))
        try:
            if served.inflight >= served.settings.max_inflight:
                raise Overloaded(
                    f"model '{served.name}' has {served.inflight} requests in flight, the "
                    f"limit (max_inflight) is {served.settings.max_inflight}"
                )
            onnx = loaded.onnx
            feeds = build_feeds(onnx, served.name, request)
            names = output_names(onnx, served.name, request.requested_outputs)
            served.inflight += 1
            loaded.inflight += 1
            batcher = loaded.batcher
            try:
                t_input = time.perf_counter_ns()
                if batcher is not None:
                    t_run, arrays = await batcher.submit(feeds, names, request.id,
                                                         request.deadline)
                elif loaded.inline:
                    _check_deadline(request.deadline)
                    t_run = time.perf_counter_ns()
                    arrays = self._run(onnx, feeds, names, request.id, loaded)
                else:
                    t_run, arrays = await asyncio.get_running_loop().run_in_executor(
                        self._pool, self._run_pooled, onnx, feeds, names, request, loaded
                    )
                t_done = time.perf_counter_ns()
            finally:
                served.inflight -= 1
                loaded.release()
        except Exception as exc:
            if counter is not None:
                counter.failure()
            if self._request_log is not None:
                self._log_failure(request, loaded, exc, started_ns, metadata, route)
            raise
        datatypes = onnx.outputs
        outputs = [
            InferOutput(name, datatypes[name], array)
            for name, array in zip(names, arrays, strict=True)
        ]
        t_end = time.perf_counter_ns()
        batch = _batch_size(request)
        loaded.stats.record_success(
            total_ns=t_end - started_ns, queue_ns=t_run - t_input, input_ns=t_input - started_ns,
            infer_ns=t_done - t_run, output_ns=t_end - t_done, batch=batch,
            executions=0 if batcher is not None else 1,
        )
        loaded.metrics.success((t_end - started_ns) / 1e9)
        latency_us = (t_end - started_ns) // 1000
        if counter is not None:
            counter.success(latency_us)
        if self._request_log is not None:
            # By reference: the request log's writer thread encodes the arrays. Positional
            # (model, version, request_id, inputs, outputs, status, latency_us,
            # timestamp_us, metadata, record_id, payload_dropped, arm, experiment_id,
            # routing_key_hash, shadow): keywords cost twice as much here.
            self._request_log.log(RequestRecord(
                served.name, loaded.version, request.id, request.inputs, outputs, "OK",
                latency_us, 0, metadata, "", False, route.arm, route.experiment_id,
                route.routing_key_hash, False,
            ))
        if route.shadows and self._shadows is not None:
            self._mirror(route, feeds, request, outputs)
        return InferResponse(
            model=served.name, version=loaded.label, id=request.id, outputs=outputs,
            routing_arm=route.arm, experiment_id=route.experiment_id,
        )

    def _mirror(self, route: Route[LoadedVersion], feeds: dict[str, np.ndarray],
                request: InferRequest, outputs: list[InferOutput]) -> None:
        """Queue a copy for each shadow of ``route``; never fails the caller."""
        assert self._shadows is not None
        for target in route.shadows:
            try:
                self._shadows.submit(ShadowJob(
                    target.handle, feeds, request.inputs, outputs, request.id,
                    route.experiment_id, route.routing_key_hash))
            except Exception:
                log.exception("shadow submit failed", extra={
                    "event": "shadow_submit_failed", "request_id": request.id})

    def _log_failure(self, request: InferRequest, loaded: LoadedVersion, exc: Exception,
                     started_ns: int, metadata: Mapping[str, str] | None,
                     route: Route[LoadedVersion]) -> None:
        assert self._request_log is not None
        try:
            status = self._status_name(exc)
        except Exception:
            status = "UNKNOWN"
        self._request_log.log(RequestRecord(
            model=loaded.model, version=loaded.version, request_id=request.id,
            inputs=request.inputs, status=status,
            latency_us=(time.perf_counter_ns() - started_ns) // 1000, metadata=metadata,
            arm=route.arm, experiment_id=route.experiment_id,
            routing_key_hash=route.routing_key_hash,
        ))

    @staticmethod
    def _run(
        onnx: OnnxModel, feeds: dict[str, np.ndarray], names: list[str], request_id: str,
        loaded: LoadedVersion,
    ) -> list[np.ndarray]:
        try:
            return onnx.run(feeds, names)
        except Exception as exc:
            log.error("model run failed", extra={
                "event": "run_failed", "request_id": request_id, "model": loaded.model,
                "version": loaded.version, "reason": f"{type(exc).__name__}: {exc}"})
            raise InferenceFailed("the model failed to run on this request") from exc

    def _run_pooled(
        self, onnx: OnnxModel, feeds: dict[str, np.ndarray], names: list[str],
        request: InferRequest, loaded: LoadedVersion,
    ) -> tuple[int, list[np.ndarray]]:
        # Checked on the worker thread: a request whose client gave up while it queued
        # is never started.
        _check_deadline(request.deadline)
        return time.perf_counter_ns(), self._run(onnx, feeds, names, request.id, loaded)

    def account_failure(self, request_model: str, request_version: str, code: str,
                        started_ns: int) -> None:
        """Count a failed request under the version it was aimed at (or production)."""
        elapsed = time.perf_counter_ns() - started_ns
        try:
            served: ServedModel | None = self._manager.get(request_model)
        except LookupError:
            served = None
        if served is None:
            self._metrics.version(UNKNOWN_MODEL, "").failure(code, elapsed / 1e9)
            return
        loaded = served.by_label.get(request_version) if request_version else served.production
        label = loaded.label if loaded is not None else request_version
        if loaded is not None:
            loaded.stats.record_failure(elapsed)
            loaded.metrics.failure(code, elapsed / 1e9)
        else:
            self._metrics.version(served.name, label).failure(code, elapsed / 1e9)


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded("the client's deadline expired before the model ran")


def _batch_size(request: InferRequest) -> int:
    first = request.inputs[0].array if request.inputs else None
    return int(first.shape[0]) if first is not None and first.ndim else 1
