"""The harness's only contact with generated Open Inference Protocol code.

Everything else in the harness handles plain bytes, strings and numpy arrays. The
request path is deliberately thin: requests are serialized once, before a run, and
sent as bytes (no per-request protobuf work on the client), and a response is parsed
only far enough to learn which model version served it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from loadtests.errors import DiscoveryError, RunError
from loadtests.pb import grpc_service_pb2 as pb
from loadtests.pb import grpc_service_pb2_grpc as pb_grpc

MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
# Large enough for batch payloads; the defaults (4 MiB receive) would fail batch-heavy runs.
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)

ParamValue = bool | int | float | str


@dataclass(frozen=True)
class RawTensor:
    """One input tensor, already laid out as little-endian bytes (``raw_input_contents``)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class TensorInfo:
    """An input or output as ModelMetadata describes it; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def _set_param(target: pb.InferParameter, value: ParamValue) -> None:
    # bool first: bool is a subclass of int.
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def encode_infer_request(
    model: str,
    version: str,
    tensors: Sequence[RawTensor],
    parameters: Mapping[str, ParamValue] | None = None,
    request_id: str = "",
) -> bytes:
    """Serialize one ModelInferRequest carrying ``tensors`` as raw input contents."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for key, value in (parameters or {}).items():
        _set_param(request.parameters[key], value)
    for tensor in tensors:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        request.raw_input_contents.append(tensor.data)
    return request.SerializeToString()


def decode_infer_request(data: bytes) -> tuple[str, str, dict[str, ParamValue], list[RawTensor]]:
    """Inverse of encode_infer_request: (model, version, parameters, tensors). For tests/tools."""
    request = pb.ModelInferRequest.FromString(data)
    params: dict[str, ParamValue] = {}
    for key, param in request.parameters.items():
        which = param.WhichOneof("parameter_choice")
        params[key] = getattr(param, which) if which else ""
    tensors = [
        RawTensor(t.name, t.datatype, tuple(t.shape), raw)
        for t, raw in zip(request.inputs, request.raw_input_contents, strict=False)
    ]
    return request.model_name, request.model_version, params, tensors


def served_version(data: bytes) -> str:
    """Response deserializer: the ``model_version`` of a serialized ModelInferResponse."""
    return pb.ModelInferResponse.FromString(data).model_version


def infer_method(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """ModelInfer on ``channel``, taking pre-serialized request bytes, returning the version."""
    return channel.unary_unary(
        MODEL_INFER_METHOD, request_serializer=None, response_deserializer=served_version
    )


def fetch_inputs(
    target: str, model: str, version: str = "", timeout_s: float = 10.0
) -> list[TensorInfo]:
    """The model's inputs from ModelMetadata; raises DiscoveryError with the server's reason."""
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            meta = stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model, version=version),
                timeout=timeout_s,
                wait_for_ready=True,
            )
        except grpc.RpcError as exc:
            raise DiscoveryError(
                f"ModelMetadata({model!r}, version={version or 'default'!r}) on {target} failed: "
                f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
            ) from exc
    if not meta.inputs:
        raise DiscoveryError(f"ModelMetadata for {model!r} on {target} lists no inputs")
    return [TensorInfo(i.name, i.datatype, tuple(int(d) for d in i.shape)) for i in meta.inputs]


def wait_model_ready(target: str, model: str, version: str = "", timeout_s: float = 30.0) -> float:
    """Block until the server reports ``model`` ready; returns seconds waited.

    Raises RunError when the deadline passes first. Each probe waits for the channel
    itself, so there is no polling interval while the server is still starting.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    last = "no answer"
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                ready = stub.ModelReady(
                    pb.ModelReadyRequest(name=model, version=version),
                    timeout=min(remaining, 2.0),
                    wait_for_ready=True,
                ).ready
            except grpc.RpcError as exc:
                last = f"{exc.code().name}"  # type: ignore[attr-defined]
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                    # An answer that is not "ready" yet: back off briefly before asking again.
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            if ready:
                return time.monotonic() - start
            last = "not ready"
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    raise RunError(f"model {model!r} on {target} not ready after {timeout_s:.0f}s ({last})")
