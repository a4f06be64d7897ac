"""Shared by the serving-level routing tests: fraud-signature models that misbehave, a
gateway factory, inference and feedback clients.

Every model here has the fraud demo's signature (input ``features`` FP32 [-1,20]; outputs
``label`` INT64 [-1] and ``probabilities`` FP32 [-1,2]), so it can be a version — or a
shadow — of a model seeded with ``logreg_like_model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from gateway.pb import admin_pb2 as apb
from gateway.pb import feedback_pb2 as fpb
from gateway.pb import feedback_pb2_grpc
from gateway.pb import grpc_service_pb2 as ipb
from gateway.pb import grpc_service_pb2_grpc as ipb_grpc
from tests.admin.helpers import OPERATOR_TOKEN, Admin
from tests.conftest import write_config
from tests.onnx_models import IR_VERSION, OPSET
from tests.support.inprocess import InProcessGateway

__all__ = ["AUTH", "FAIL_VALUE", "N_FEATURES", "Clients", "gather_model", "start_gateway",
           "features", "infer_request"]

N_FEATURES = 20
AUTH = f'[auth.tokens.ops]\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\n'
FAIL_VALUE = 10.0
"""``features[:, 0]`` set to this makes a ``gather_model(offset=0)`` fail at run time."""
T = TypeVar("T")


def gather_model(offset: int = 0, table: tuple[float, float] = (0.8, 0.2)) -> bytes:
    """A fraud-signature model that fails inside onnxruntime for some inputs.

    ``idx = int(features[:, 0]) - offset`` indexes a 2-element table (``Gather``, valid
    indices -2..1); ``probabilities = [t, 1 - t]`` and ``label = argmax``. With
    ``offset=0`` warm-up (zeros) works and ``features[:, 0] = FAIL_VALUE`` fails; with
    ``offset=5`` even warm-up fails (a version whose load must fail).
    """
    nodes = [
        helper.make_node("Slice", ["features", "start", "end", "axis"], ["first"]),
        helper.make_node("Cast", ["first"], ["first_int"], to=TensorProto.INT64),
        helper.make_node("Sub", ["first_int", "offset"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["gathered"], axis=0),
        helper.make_node("Sub", ["one", "gathered"], ["other"]),
        helper.make_node("Concat", ["gathered", "other"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
        numpy_helper.from_array(np.array([offset], dtype=np.int64), "offset"),
        numpy_helper.from_array(np.array(table, dtype=np.float32), "table"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes, "fraud_gather",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="tests.routing")
    return model.SerializeToString()


def start_gateway(root: Path, models: dict[str, Path], extra: str = "") -> InProcessGateway:
    """An in-process gateway seeding ``models`` (name → artifact), with the operator token."""
    config = write_config(root / "gateway.toml", models, AUTH + extra)
    return InProcessGateway.start_from(config, root / "data")


def features(i: int, *, first: float | None = None) -> np.ndarray:
    x = np.random.default_rng(i).normal(size=(1, N_FEATURES)).astype(np.float32)
    if first is not None:
        x[0, 0] = first
    return x


def infer_request(model: str, request_id: str, x: np.ndarray, *, version: str = "",
                  key: str | None = None) -> ipb.ModelInferRequest:
    message = ipb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    message.inputs.add(name="features", datatype="FP32", shape=x.shape)
    message.raw_input_contents.append(x.tobytes())
    if key is not None:
        message.parameters["routing_key"].string_param = key
    return message


def predicted(response: ipb.ModelInferResponse) -> int:
    """The ``label`` output's first element."""
    names = [o.name for o in response.outputs]
    raw = response.raw_output_contents[names.index("label")]
    return int(np.frombuffer(raw, dtype=np.int64)[0])


class Clients:
    """Inference, feedback and admin stubs on one gateway."""

    def __init__(self, grpc_address: str, admin_address: str) -> None:
        self._channels = [grpc.insecure_channel(grpc_address),
                          grpc.insecure_channel(admin_address)]
        self.inference = ipb_grpc.GRPCInferenceServiceStub(self._channels[0])
        self.feedback = feedback_pb2_grpc.FeedbackServiceStub(self._channels[0])
        self.admin = Admin(self._channels[1])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def traffic(self, model: str) -> apb.TrafficPolicyStatus:
        return self.admin.call("GetTrafficPolicy", apb.GetTrafficPolicyRequest(model=model))

    def set_split(self, model: str, weights: dict[int, float], *, sticky: bool = False,
                  shadows: dict[int, float] | None = None) -> apb.TrafficPolicyStatus:
        return self.admin.call("SetTrafficPolicy", apb.SetTrafficPolicyRequest(
            model=model, sticky=sticky,
            arms=[apb.TrafficArm(version=v, weight=w) for v, w in weights.items()],
            shadows=[apb.TrafficShadow(version=v, fraction=f)
                     for v, f in (shadows or {}).items()]))

    def labels(self, model: str, labels: dict[str, int]) -> fpb.StreamFeedbackResponse:
        summary = self.feedback.StreamFeedback(
            (fpb.Feedback(model=model, request_id=rid, class_label=label)
             for rid, label in labels.items()), timeout=30)
        assert summary.rejected == 0, summary.rejections
        return summary

    def register(self, model: str, data: bytes) -> int:
        return int(self.admin.register(model, data, chunk=64 * 1024).version.version)

    def model(self, name: str) -> Any:
        return self.admin.model(name)
