"""Conformance through an unmodified ``tritonclient.grpc`` against a subprocess gateway.

Runs in its own pytest process (see the Makefile): tritonclient's generated ``inference``
messages and ours cannot be loaded in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from tests.conftest import DATATYPES, write_config
from tests.onnx_models import example_array
from tests.support.subprocess_gateway import SubprocessGateway

TOKEN = "conformance-operator-token"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            model_files: dict[str, Path]) -> Iterator[SubprocessGateway]:
    root = tmp_path_factory.mktemp("triton")
    config = write_config(
        root / "gateway.toml", model_files,
        "[server]\nallow_repository_control = true\n"
        f"[auth.tokens.ops]\ntoken = '{TOKEN}'\nrole = 'operator'\n"
        "[auth.tokens.viewer]\ntoken = 'viewer-token'\nrole = 'reader'\n",
    )
    with SubprocessGateway(config, root / "data") as gw:
        yield gw


@pytest.fixture
def client(gateway: SubprocessGateway) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(gateway.grpc_address)
    yield c
    c.close()


def fraud_input(x: np.ndarray) -> tc.InferInput:
    item = tc.InferInput("features", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    return item


def test_live_ready_and_metadata(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("logreg") and not client.is_model_ready("nope")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "inference-gateway" and "statistics" in meta["extensions"]
    model = client.get_model_metadata("logreg", as_json=True)
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "20"]}]


def test_model_config(client: tc.InferenceServerClient) -> None:
    config = client.get_model_config("logreg", as_json=True)["config"]
    assert config["name"] == "logreg" and config["platform"] == "onnxruntime_onnx"
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == ["-1", "20"]
    assert "max_batch_size" not in config or config["max_batch_size"] == 0


def test_infer_raw_equals_onnxruntime(client: tc.InferenceServerClient,
                                      model_files: dict[str, Path]) -> None:
    x = np.random.default_rng(3).normal(size=(8, 20)).astype(np.float32)
    result = client.infer("logreg", [fraud_input(x)], request_id="tc-1")
    session = ort.InferenceSession(str(model_files["logreg"]))
    label, proba = session.run(["label", "probabilities"], {"features": x})
    assert result.get_response().id == "tc-1"
    assert result.get_response().model_version == "1"
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    assert np.max(np.abs(result.as_numpy("probabilities") - proba)) <= 1e-6


def test_requested_outputs_filter(client: tc.InferenceServerClient) -> None:
    x = np.ones((2, 3), dtype=np.float32)
    item = tc.InferInput("a", [2, 3], "FP32")
    item.set_data_from_numpy(x)
    result = client.infer("two_out", [item], outputs=[tc.InferRequestedOutput("double")])
    assert [o.name for o in result.get_response().outputs] == ["double"]
    np.testing.assert_array_equal(result.as_numpy("double"), x * 2)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_datatypes_raw(client: tc.InferenceServerClient, datatype: str) -> None:
    x = example_array(datatype, (3, 4))
    item = tc.InferInput("x", [3, 4], datatype)
    item.set_data_from_numpy(x)
    got = client.infer(f"id_{datatype.lower()}", [item]).as_numpy("y")
    if datatype == "BYTES":
        assert [bytes(v) for v in got.reshape(-1)] == [bytes(v) for v in x.reshape(-1)]
    else:
        np.testing.assert_array_equal(got, x)


TYPED_FIELDS = {"INT32": "int_contents", "INT64": "int64_contents", "FP32": "fp32_contents",
                "FP64": "fp64_contents", "BOOL": "bool_contents", "UINT8": "uint_contents",
                "BYTES": "bytes_contents"}


@pytest.mark.parametrize("datatype", sorted(TYPED_FIELDS))
def test_datatypes_typed_contents(gateway: SubprocessGateway, datatype: str) -> None:
    """tritonclient's InferInput always sends raw bytes, so typed contents go through
    tritonclient's own generated stub and messages."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = example_array(datatype, (2, 4))
    request = service_pb2.ModelInferRequest(model_name=f"id_{datatype.lower()}")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 4])
    getattr(tensor.contents, TYPED_FIELDS[datatype]).extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    result = tc.InferResult(response)
    got = result.as_numpy("y")
    if datatype == "BYTES":
        assert [bytes(v) for v in got.reshape(-1)] == [bytes(v) for v in x.reshape(-1)]
    else:
        np.testing.assert_array_equal(got, x)


def test_statistics_rise_by_exactly_the_requests(client: tc.InferenceServerClient) -> None:
    def success() -> int:
        stats = client.get_inference_statistics("logreg", as_json=True)["model_stats"][0]
        return int(stats["inference_stats"]["success"].get("count", 0))

    x = np.zeros((1, 20), dtype=np.float32)
    before = success()
    for _ in range(5):
        client.infer("logreg", [fraud_input(x)])
    assert success() - before == 5


def test_streaming(client: tc.InferenceServerClient) -> None:
    import queue

    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    x = np.zeros((1, 20), dtype=np.float32)
    for i in range(3):
        client.async_stream_infer("logreg", [fraud_input(x)], request_id=f"st-{i}")
    bad = tc.InferInput("features", [1, 21], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 21), dtype=np.float32))
    client.async_stream_infer("logreg", [bad], request_id="st-bad")
    got = [results.get(timeout=30) for _ in range(4)]
    client.stop_stream()
    ids = [r.get_response().id for r, e in got if e is None]
    errors = [e for _, e in got if e is not None]
    assert ids == ["st-0", "st-1", "st-2"]
    assert len(errors) == 1 and "expected shape [-1, 20], got [1, 21]" in str(errors[0])


def test_errors_keep_the_server_serving(client: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [fraud_input(np.zeros((1, 20), dtype=np.float32))])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert client.infer("logreg", [fraud_input(np.zeros((1, 20), np.float32))]) is not None


def test_repository_index_load_unload(client: tc.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "logreg", "version": "1", "state": "READY"} in index
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("two_out")
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("two_out", headers={"authorization": "Bearer viewer-token"})
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    auth = {"authorization": f"Bearer {TOKEN}"}
    client.unload_model("two_out", headers=auth)
    assert not client.is_model_ready("two_out")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("two_out", headers=auth, files={"file:1/model.onnx": b"x"})
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    client.load_model("two_out", headers=auth)
    assert client.is_model_ready("two_out")
