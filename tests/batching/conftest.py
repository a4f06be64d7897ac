"""A real in-process gateway serving small real ONNX models with dynamic batching."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_models
from tests.support.inprocess import InProcessGateway

OPERATOR_TOKEN = "batching-operator-token"
# 60 s: a batch of these models leaves only when it is full (or the version drains).
NEVER_US = 60_000_000
POISON_TABLE = np.arange(20, dtype=np.float32).reshape(10, 2)

# name -> (model file, extra keys of [models.NAME], [models.NAME.dynamic_batching] body)
MODELS: dict[str, tuple[str, str, str]] = {
    # size-triggered: 4 rows or nothing
    "sized": ("two_out", "", f"max_batch_size = 4\nmax_queue_delay_us = {NEVER_US}\n"),
    # time-triggered: the size (64) is never reached in the tests
    "timed": ("two_out", "", "max_batch_size = 64\nmax_queue_delay_us = 500000\n"),
    # fails inside onnxruntime for an index outside [-10, 9]
    "poison": ("poison", "", f"max_batch_size = 4\nmax_queue_delay_us = {NEVER_US}\n"),
    # run in the inference pool (inline_max_us = 0), preferred sizes
    "mlp": ("mlp", "inline_max_us = 0\n",
            "max_batch_size = 16\nmax_queue_delay_us = 2000\npreferred_batch_sizes = [8, 4]\n"),
    # non-batch dims are dynamic: only equal shapes share a batch
    "ragged": ("ragged", "", "max_batch_size = 8\nmax_queue_delay_us = 5000\n"),
    # bounded queue, flushed by a drain
    "drained": ("two_out", "",
                f"max_batch_size = 8\nmax_queue_delay_us = {NEVER_US}\nmax_queue_size = 2\n"),
    # [2,3] inputs: batching must refuse to load it
    "fixed": ("fixed", "", "max_batch_size = 4\n"),
}


def poison_model() -> bytes:
    """Input ``idx`` INT64 [-1,1]; output ``y`` FP32 [-1,1,2] = ``POISON_TABLE[idx]``.
    An index outside [-10, 9] makes onnxruntime fail the whole run."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        "poison",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 2])],
        initializer=[numpy_helper.from_array(POISON_TABLE, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_models.OPSET)],
                              ir_version=onnx_models.IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


@pytest.fixture(scope="session")
def batching_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batching-models")
    built = {
        "two_out": onnx_models.two_output_model(),
        "poison": poison_model(),
        "mlp": onnx_models.mlp_model(in_dim=8, hidden=(32,), out_dim=3),
        "ragged": onnx_models.identity_model("FP32", shape=(-1, -1)),
        "fixed": onnx_models.fixed_shape_model(),
    }
    paths = {}
    for name, data in built.items():
        paths[name] = root / f"{name}.onnx"
        paths[name].write_bytes(data)
    return paths


def batching_config(path: Path, files: dict[str, Path]) -> Path:
    lines = ["[server]", "allow_repository_control = true", "",
             "[auth.tokens.ops]", f'token = "{OPERATOR_TOKEN}"', 'role = "operator"', ""]
    for name, (file, extra, batching) in MODELS.items():
        lines += [f"[models.{name}]", f'artifact = "{files[file]}"', extra,
                  f"[models.{name}.dynamic_batching]", batching]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory,
                    batching_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    root = tmp_path_factory.mktemp("batching")
    config = batching_config(root / "gateway.toml", batching_files)
    server = InProcessGateway.start_from(config, root / "data")
    yield server
    server.stop()


@pytest.fixture
def channel(batching_server: InProcessGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(batching_server.grpc_address) as ch:
        yield ch
