"""The V2 ``inference.GRPCInferenceService`` servicer: translate, call the core, translate."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gateway import __version__
from gateway.auth import TokenAuthority
from gateway.dataplane import DataPlane
from gateway.errors import InvalidInput, ModelNotFound, PermissionDenied, ShuttingDown
from gateway.ids import RequestIds
from gateway.model_manager import ModelManager, ServedModel
from gateway.pb import grpc_service_pb2 as pb
from gateway.pb import grpc_service_pb2_grpc as pb_grpc
from gateway.rpc.converters import decode_request, encode_response
from gateway.rpc.status import status_for
from gateway.stats import StatsBook
from lifecycle.domain import Signature

SERVER_NAME = "inference-gateway"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "parameters")
PLATFORM = "onnxruntime_onnx"
access_log = logging.getLogger("gateway.access")
SHUTTING_DOWN = "the gateway is shutting down: send the request to another replica"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        *,
        dataplane: DataPlane,
        manager: ModelManager,
        stats: StatsBook,
        authority: TokenAuthority,
        allow_repository_control: bool,
        readiness: Any,
        access_log_sample: float = 0.0,
        rng: random.Random | None = None,
        metadata_keys: tuple[str, ...] = (),
    ) -> None:
        """``metadata_keys``: the client metadata the request log captures (none: the
        invocation metadata is not even read)."""
        self._dp = dataplane
        self._manager = manager
        self._stats = stats
        self._authority = authority
        self._allow_control = allow_repository_control
        self._readiness = readiness
        self._ids = RequestIds()
        self._access_sample = access_log_sample
        self._rng = rng or random.Random()
        self._metadata_keys = frozenset(metadata_keys)
        self._draining = False

    def drain(self) -> None:
        """Refuse every inference from now on with UNAVAILABLE (safe to retry elsewhere);
        those already running finish. The first step of the app's stop."""
        self._draining = True

    def _metadata(self, context: Any) -> dict[str, str] | None:
        keys = self._metadata_keys
        captured = {k: v for k, v in context.invocation_metadata() or () if k in keys}
        return captured or None

    async def _abort(self, context: grpc.aio.ServicerContext, exc: BaseException,
                     request_id: str = "") -> None:
        code, message = status_for(exc, request_id)
        await context.abort(code, message)

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._readiness())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._manager.is_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=EXTENSIONS
        )

    def _signature(self, request: Any) -> tuple[ServedModel, Signature]:
        served = self._manager.get(request.name)
        if request.version:
            _, loaded = self._manager.resolve(request.name, request.version)
            return served, loaded.onnx.signature
        return served, served.signature

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        try:
            served, signature = self._signature(request)
        except Exception as exc:
            await self._abort(context, exc)
            raise
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=sorted(served.by_label, key=int),
            platform=PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                    for t in signature.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                     for t in signature.outputs],
        )

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        try:
            served, signature = self._signature(request)
        except Exception as exc:
            await self._abort(context, exc)
            raise
        batching = served.settings.dynamic_batching
        if batching is not None and any(t.shape[:1] != (-1,) for t in signature.inputs):
            batching = None  # such a version fails to load; describe the model as it is
        # Triton's convention: with max_batch_size > 0 the dims leave out the batch dim
        # (clients such as perf_analyzer then prepend it).
        skip = 1 if batching is not None else 0
        config = pb.ModelConfig(
            name=served.name, platform=PLATFORM, backend="onnxruntime",
            max_batch_size=batching.max_batch_size if batching is not None else 0,
            input=[pb.ModelInput(name=t.name, data_type=_triton_type(t.datatype),
                                 dims=t.shape[skip:]) for t in signature.inputs],
            output=[pb.ModelOutput(name=t.name, data_type=_triton_type(t.datatype),
                                   dims=t.shape[skip:]) for t in signature.outputs],
        )
        if batching is not None:
            config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
            config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        if request.name:
            try:
                self._manager.get(request.name)
            except ModelNotFound as exc:
                await self._abort(context, exc)
                raise
        response = pb.ModelStatisticsResponse()
        for s in self._stats.select(request.name, request.version):
            def dur(d: Any) -> pb.StatisticDuration:
                return pb.StatisticDuration(count=d.count, ns=d.ns)
            response.model_stats.add(
                name=s.model, version=s.version, last_inference=s.last_inference_ms,
                inference_count=s.inference_count, execution_count=s.execution_count,
                inference_stats=pb.InferStatistics(
                    success=dur(s.success), fail=dur(s.fail), queue=dur(s.queue),
                    compute_input=dur(s.compute_input), compute_infer=dur(s.compute_infer),
                    compute_output=dur(s.compute_output),
                ),
                batch_stats=[pb.InferBatchStatistics(
                    batch_size=size, compute_input=dur(b.compute_input),
                    compute_infer=dur(b.compute_infer), compute_output=dur(b.compute_output),
                ) for size, b in sorted(s.batches.items())],
            )
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.perf_counter_ns()
        if not request.id:
            request.id = self._ids.next()
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        metadata = self._metadata(context) if self._metadata_keys else None
        try:
            if self._draining:
                raise ShuttingDown(SHUTTING_DOWN)
            response = await self._dp.infer(decode_request(request, deadline), started,
                                            metadata, _routing_header(context))
        except Exception as exc:
            code, message = status_for(exc, request.id)
            self._dp.account_failure(request.model_name, request.model_version, code.name,
                                     started)
            if self._access_sample:
                self._access(request, "", code.name, started)
            await context.abort(code, message)
            raise
        if self._access_sample:
            self._access(request, response.version, "OK", started)
        return encode_response(response)

    def _access(self, request: Any, version: str, code: str, started: int) -> None:
        """The opt-in, sampled per-request access log (capturing requests is the request
        log's job, not this one's)."""
        if self._rng.random() < self._access_sample:
            access_log.info("request", extra={
                "event": "access", "request_id": request.id, "model": request.model_name,
                "version": version or request.model_version, "code": code,
                "latency_us": (time.perf_counter_ns() - started) // 1000})

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        metadata = self._metadata(context) if self._metadata_keys else None
        routing_header = _routing_header(context)
        async for request in request_iterator:
            started = time.perf_counter_ns()
            if not request.id:
                request.id = self._ids.next()
            try:
                if self._draining:
                    raise ShuttingDown(SHUTTING_DOWN)
                response = await self._dp.infer(decode_request(request, deadline), started,
                                                metadata, routing_header)
                yield pb.ModelStreamInferResponse(infer_response=encode_response(response))
            except Exception as exc:
                code, message = status_for(exc, request.id)
                self._dp.account_failure(request.model_name, request.model_version,
                                         code.name, started)
                yield pb.ModelStreamInferResponse(
                    error_message=f"{code.name}: {message}",
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, model_version=request.model_version,
                        id=request.id),
                )

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for served in self._manager.models():
            if served.versions:
                for version in sorted(served.versions):
                    response.models.add(name=served.name, version=str(version), state="READY")
            elif not request.ready:
                reason = "; ".join(f"version {v}: {r}" for v, r in served.failures.items())
                response.models.add(name=served.name, state="UNAVAILABLE",
                                    reason=reason or "not loaded")
        return response

    def _authorize_control(self, context: Any) -> str:
        if not self._allow_control:
            raise PermissionDenied(
                "repository control is disabled on the inference port "
                "(set server.allow_repository_control = true)"
            )
        metadata = dict(context.invocation_metadata() or ())
        return self._authority.authorize(metadata.get("authorization"), "operator")

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        try:
            actor = self._authorize_control(context)
            version = _load_version_parameter(request.parameters)
            await self._manager.load_model(request.model_name, version, actor=actor)
        except Exception as exc:
            await self._abort(context, exc)
            raise
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        try:
            actor = self._authorize_control(context)
            await self._manager.unload_model(request.model_name, actor=actor)
        except Exception as exc:
            await self._abort(context, exc)
            raise
        return pb.RepositoryModelUnloadResponse()


def _load_version_parameter(parameters: Any) -> int | None:
    version: int | None = None
    for key, value in parameters.items():
        if key.startswith("file:"):
            raise InvalidInput(
                f"parameters['{key}']: model uploads are not accepted on the inference port; "
                "register versions through the admin service"
            )
        if key != "version":
            raise InvalidInput(f"parameters['{key}']: unknown parameter, expected 'version'")
        kind = value.WhichOneof("parameter_choice")
        raw = getattr(value, kind) if kind else None
        try:
            version = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"parameters['version']: expected a version number, got {raw!r}"
            ) from exc
    return version


def _routing_header(context: Any) -> str | None:
    """The ``x-routing-key`` metadata value, or None when the client sent none."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-routing-key":
            return value if isinstance(value, str) else None
    return None


def _triton_type(datatype: str) -> str:
    """The ``DataType`` enum's name for a V2 datatype (``TYPE_FP32`` for ``FP32``)."""
    from gateway.datatypes import V2_TO_TRITON_ENUM

    return pb.DataType.Name(V2_TO_TRITON_ENUM[datatype])
