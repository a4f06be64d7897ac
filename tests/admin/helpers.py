"""Clients and models shared by the admin tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc
from gateway.pb import grpc_service_pb2 as ipb
from gateway.pb import grpc_service_pb2_grpc as ipb_grpc
from tests.admin.cli_support import OPERATOR_TOKEN

READER_TOKEN = "viewer-secret"
ENV_TOKEN = "env-secret"
MAX_UPLOAD = 64 * 1024


class Admin:
    """The admin stub; every call carries ``token`` unless told otherwise."""

    def __init__(self, channel: grpc.Channel, token: str | None = OPERATOR_TOKEN) -> None:
        self.stub = admin_pb2_grpc.AdminServiceStub(channel)
        self.token = token

    def metadata(self, token: str | None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),) if token else ()

    def call(self, method: str, request: Any, *, token: str | None = "", **kw: Any) -> Any:
        token = self.token if token == "" else token
        return getattr(self.stub, method)(request, metadata=self.metadata(token),
                                          timeout=60, **kw)

    def future(self, method: str, request: Any) -> grpc.Future:
        return getattr(self.stub, method).future(request, metadata=self.metadata(self.token),
                                                 timeout=60)

    def register(self, model: str, data: bytes, *, chunk: int = 200, token: str | None = "",
                 **header: Any) -> apb.RegisterVersionResponse:
        return self.call("RegisterVersion", upload(model, data, chunk=chunk, **header),
                         token=token)

    def download(self, model: str, version: int, chunk_bytes: int = 0
                 ) -> tuple[apb.ArtifactInfo, list[bytes]]:
        messages = list(self.call("DownloadVersion", apb.DownloadVersionRequest(
            model=model, version=version, chunk_bytes=chunk_bytes)))
        assert messages[0].WhichOneof("content") == "info"
        return messages[0].info, [m.chunk for m in messages[1:]]

    def model(self, name: str) -> apb.Model:
        return self.call("GetModel", apb.GetModelRequest(name=name))

    def promote(self, model: str, version: int) -> apb.AliasChange:
        return self.call("Promote", apb.PromoteRequest(model=model, version=version))

    def rollback(self, model: str) -> apb.AliasChange:
        return self.call("Rollback", apb.RollbackRequest(model=model))

    def events(self, model: str = "", action: str = "", limit: int = 0) -> list[apb.Event]:
        return list(self.call("ListEvents", apb.ListEventsRequest(
            model=model, action=action, limit=limit)).events)


def upload(model: str, data: bytes, *, chunk: int = 200, **header: Any
           ) -> Iterator[apb.RegisterVersionRequest]:
    yield apb.RegisterVersionRequest(header=apb.RegisterVersionHeader(model=model, **header))
    for start in range(0, len(data), chunk):
        yield apb.RegisterVersionRequest(chunk=data[start:start + chunk])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rpc_error(fn: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, bytes | str):
            list(result)
    return info.value


def infer(address: str, model: str, version: str = "", *, rows: int = 2
          ) -> ipb.ModelInferResponse:
    x = np.random.default_rng(0).normal(size=(rows, 20)).astype(np.float32)
    request = ipb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="features", datatype="FP32", shape=[rows, 20])
    request.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(address) as channel:
        return ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def custom_op_model() -> bytes:
    """Valid ONNX (the checker accepts unknown domains) that onnxruntime cannot load."""
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node], "custom_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, ir_version=9, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    return model.SerializeToString()
