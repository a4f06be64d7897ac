"""The V2 inference service over a real in-process server, through our generated stubs."""

from __future__ import annotations

import concurrent.futures
import struct
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from gateway.pb import grpc_service_pb2 as pb
from gateway.pb import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import DATATYPES
from tests.onnx_models import example_array


def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def raw_request(model: str, name: str, datatype: str, array: np.ndarray,
                **kwargs: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **kwargs)  # type: ignore[arg-type]
    request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    if datatype == "BYTES":
        request.raw_input_contents.append(
            b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1)))
    else:
        request.raw_input_contents.append(array.tobytes())
    return request


def decode(response: pb.ModelInferResponse, index: int) -> np.ndarray:
    out = response.outputs[index]
    raw = response.raw_output_contents[index]
    if out.datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            (n,) = struct.unpack_from("<I", raw, offset)
            items.append(raw[offset + 4:offset + 4 + n])
            offset += 4 + n
        return np.array(items, dtype=object).reshape(tuple(out.shape))
    from gateway.datatypes import V2_TO_NUMPY
    return np.frombuffer(raw, dtype=V2_TO_NUMPY[out.datatype]).reshape(tuple(out.shape))


def features(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 20)).astype(np.float32)


def test_liveness_readiness_and_metadata(channel: grpc.Channel) -> None:
    s = stub(channel)
    assert s.ServerLive(pb.ServerLiveRequest()).live
    assert s.ServerReady(pb.ServerReadyRequest()).ready
    assert s.ModelReady(pb.ModelReadyRequest(name="logreg")).ready
    assert s.ModelReady(pb.ModelReadyRequest(name="logreg", version="1")).ready
    assert not s.ModelReady(pb.ModelReadyRequest(name="logreg", version="9")).ready
    assert not s.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    meta = s.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "inference-gateway" and "model_repository" in meta.extensions
    md = s.ModelMetadata(pb.ModelMetadataRequest(name="logreg"))
    assert md.platform == "onnxruntime_onnx" and list(md.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [
        ("features", "FP32", [-1, 20])]
    assert {t.name for t in md.outputs} == {"label", "probabilities"}


def test_model_config_is_triton_shaped(channel: grpc.Channel) -> None:
    config = stub(channel).ModelConfig(pb.ModelConfigRequest(name="logreg")).config
    assert config.name == "logreg" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("features", pb.TYPE_FP32, [-1, 20])]


def test_predictions_equal_onnxruntime(channel: grpc.Channel,
                                       model_files: dict[str, Path]) -> None:
    x = features(5)
    response = stub(channel).ModelInfer(raw_request("logreg", "features", "FP32", x, id="r-1"))
    session = ort.InferenceSession(str(model_files["logreg"]))
    label, proba = session.run(["label", "probabilities"], {"features": x})
    names = [o.name for o in response.outputs]
    assert response.id == "r-1" and response.model_version == "1"
    np.testing.assert_array_equal(decode(response, names.index("label")), label)
    np.testing.assert_allclose(decode(response, names.index("probabilities")), proba, atol=1e-6)


def test_generated_request_id_is_a_uuid(channel: grpc.Channel) -> None:
    import uuid

    ids = [stub(channel).ModelInfer(raw_request("logreg", "features", "FP32", features())).id
           for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips_raw(channel: grpc.Channel, datatype: str) -> None:
    x = example_array(datatype, (2, 4))
    response = stub(channel).ModelInfer(raw_request(f"id_{datatype.lower()}", "x", datatype, x))
    assert response.outputs[0].datatype == datatype
    got = decode(response, 0)
    if datatype == "BYTES":
        assert [bytes(v) for v in got.reshape(-1)] == [bytes(v) for v in x.reshape(-1)]
    else:
        np.testing.assert_array_equal(got, x)


TYPED = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
         "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
         "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
         "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_every_datatype_round_trips_typed(channel: grpc.Channel, datatype: str) -> None:
    x = example_array(datatype, (2, 4))
    request = pb.ModelInferRequest(model_name=f"id_{datatype.lower()}")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 4])
    getattr(tensor.contents, TYPED[datatype]).extend(x.reshape(-1).tolist())
    got = decode(stub(channel).ModelInfer(request), 0)
    if datatype == "BYTES":
        assert [bytes(v) for v in got.reshape(-1)] == [bytes(v) for v in x.reshape(-1)]
    else:
        np.testing.assert_array_equal(got, x)


def test_requested_outputs_in_request_order(channel: grpc.Channel) -> None:
    x = np.ones((2, 3), dtype=np.float32)
    request = raw_request("two_out", "a", "FP32", x)
    request.outputs.add(name="double")
    request.outputs.add(name="sum")
    response = stub(channel).ModelInfer(request)
    assert [o.name for o in response.outputs] == ["double", "sum"]
    np.testing.assert_array_equal(decode(response, 0), x * 2)
    np.testing.assert_array_equal(decode(response, 1), x + 1)
    all_outputs = stub(channel).ModelInfer(raw_request("two_out", "a", "FP32", x))
    assert len(all_outputs.outputs) == 3


def test_streaming_reports_errors_per_message(channel: grpc.Channel) -> None:
    good = raw_request("logreg", "features", "FP32", features(), id="s-1")
    bad = raw_request("logreg", "features", "FP64", features().astype(np.float64), id="s-2")
    responses = list(stub(channel).ModelStreamInfer(iter([good, bad, good])))
    assert [r.error_message == "" for r in responses] == [True, False, True]
    assert responses[0].infer_response.id == "s-1"
    assert "INVALID_ARGUMENT" in responses[1].error_message
    assert "expected datatype FP32, got FP64" in responses[1].error_message


def _bad(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    return request


def _mixed() -> pb.ModelInferRequest:
    request = raw_request("logreg", "features", "FP32", features())
    request.inputs[0].contents.fp32_contents.extend([0.0] * 60)
    return request


def _missing() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="logreg")


def _extra() -> pb.ModelInferRequest:
    request = raw_request("logreg", "features", "FP32", features())
    request.inputs.add(name="bogus", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0\0\0\0")
    return request


def _shape(shape: list[int], nbytes: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="logreg")
    request.inputs.add(name="features", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"\0" * nbytes)
    return request


BAD_REQUESTS = [
    ("unknown model", lambda: raw_request("nope", "x", "FP32", features()),
     grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    ("unknown version", lambda: raw_request("logreg", "features", "FP32", features(),
                                            model_version="7"),
     grpc.StatusCode.NOT_FOUND, "version '7' of model 'logreg' is not served"),
    ("missing input", _missing, grpc.StatusCode.INVALID_ARGUMENT,
     "model 'logreg' is missing input(s) ['features']"),
    ("extra input", _extra, grpc.StatusCode.INVALID_ARGUMENT,
     "unexpected input 'bogus' for model 'logreg': expected inputs ['features']"),
    ("wrong datatype", lambda: raw_request("logreg", "features", "FP64",
                                           features().astype(np.float64)),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'features': expected datatype FP32, got FP64"),
    ("unknown datatype", lambda: raw_request("logreg", "features", "FP8", features()),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'features': unknown datatype 'FP8'"),
    ("minus-one dim", lambda: _shape([-1, 20], 80), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'features': every dimension must be positive, got shape [-1, 20]"),
    ("negative dim", lambda: _shape([1, -20], 80), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'features': every dimension must be positive, got shape [1, -20]"),
    ("zero dim", lambda: _shape([0, 20], 0), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'features': every dimension must be positive, got shape [0, 20]"),
    ("wrong rank", lambda: _shape([20], 80), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'features': expected shape [-1, 20] (rank 2), got [20]"),
    ("wrong dim", lambda: _shape([1, 21], 84), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'features': expected shape [-1, 20], got [1, 21]"),
    ("byte length", lambda: _shape([1, 20], 79), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'features': raw content has 79 bytes, expected 80 (FP32 shape [1, 20])"),
    ("mixed contents", _mixed, grpc.StatusCode.INVALID_ARGUMENT,
     "input 'features': contents and raw_input_contents cannot be mixed"),
    ("unknown output", lambda: _with_output("nope"), grpc.StatusCode.INVALID_ARGUMENT,
     "requested output 'nope' is not an output of model 'logreg'"),
    ("oversize message", lambda: _shape([20_000, 20], 1_600_000),
     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
]


def _with_output(name: str) -> pb.ModelInferRequest:
    request = raw_request("logreg", "features", "FP32", features())
    request.outputs.add(name=name)
    return request


@pytest.mark.parametrize(("case", "build", "code", "message"), BAD_REQUESTS,
                         ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_exact_status_then_server_still_serves(
    channel: grpc.Channel, case: str, build, code: grpc.StatusCode, message: str,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub(channel).ModelInfer(build())
    assert info.value.code() == code, info.value.details()
    assert message in (info.value.details() or "")
    ok = stub(channel).ModelInfer(raw_request("logreg", "features", "FP32", features()))
    assert ok.model_version == "1"


def test_runtime_failure_is_internal_with_generic_message(channel: grpc.Channel) -> None:
    bad_input = {"data": np.zeros((1, 4), dtype=np.float32),
                 "indices": np.array([10], dtype=np.int64)}  # out of range: see the builder
    request = pb.ModelInferRequest(model_name="fails")
    for name, array in bad_input.items():
        request.inputs.add(name=name, datatype=_v2(array), shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "the model failed to run on this request"
    assert stub(channel).ServerLive(pb.ServerLiveRequest()).live


def _v2(array: np.ndarray) -> str:
    from gateway.datatypes import NUMPY_TO_V2
    return NUMPY_TO_V2[array.dtype]


def test_expired_deadline_gives_deadline_exceeded(channel: grpc.Channel) -> None:
    """A batch the MLP needs tens of milliseconds for, under a 2 ms deadline."""
    x = np.ones((1500, 64), dtype=np.float32)
    with pytest.raises(grpc.RpcError) as info:
        stub(channel).ModelInfer(raw_request("mlp", "x", "FP32", x), timeout=0.002)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub(channel).ModelInfer(raw_request("mlp", "x", "FP32", x[:2])).outputs


def test_two_hundred_concurrent_requests_all_correct(channel: grpc.Channel,
                                                     model_files: dict[str, Path]) -> None:
    session = ort.InferenceSession(str(model_files["logreg"]))
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(2, 20)).astype(np.float32) for _ in range(200)]
    futures = [stub(channel).ModelInfer.future(raw_request("logreg", "features", "FP32", x))
               for x in batches]
    for x, future in zip(batches, futures, strict=True):
        response = future.result(timeout=60)
        expected = session.run(["probabilities"], {"features": x})[0]
        names = [o.name for o in response.outputs]
        np.testing.assert_allclose(decode(response, names.index("probabilities")), expected,
                                   atol=1e-6)


def test_statistics_rise_by_exactly_the_requests_made(channel: grpc.Channel) -> None:
    s = stub(channel)

    def stats() -> pb.ModelStatistics:
        return s.ModelStatistics(pb.ModelStatisticsRequest(name="two_out")).model_stats[0]

    x = np.ones((1, 3), dtype=np.float32)
    s.ModelInfer(raw_request("two_out", "a", "FP32", x))
    before = stats()
    for _ in range(7):
        s.ModelInfer(raw_request("two_out", "a", "FP32", x))
    with pytest.raises(grpc.RpcError):
        s.ModelInfer(raw_request("two_out", "a", "FP64", x.astype(np.float64)))
    after = stats()
    ist, bst = after.inference_stats, before.inference_stats
    assert ist.success.count - bst.success.count == 7
    assert ist.fail.count - bst.fail.count == 1
    for field in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(ist, field).count - getattr(bst, field).count == 7
        assert getattr(ist, field).ns >= getattr(bst, field).ns
    assert after.execution_count - before.execution_count == 7
    assert after.inference_count - before.inference_count == 7
    with pytest.raises(grpc.RpcError) as info:
        s.ModelStatistics(pb.ModelStatisticsRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _metric(port: int, line_prefix: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(line_prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_prometheus_counters_match_traffic_exactly(core_server, channel: grpc.Channel) -> None:
    port = core_server.http_port
    ok = 'gateway_requests_total{code="OK",model="id_fp32",version="1"}'
    bad = 'gateway_requests_total{code="INVALID_ARGUMENT",model="id_fp32",version="1"}'
    before_ok, before_bad = _metric(port, ok), _metric(port, bad)
    x = np.ones((1, 4), dtype=np.float32)
    for _ in range(11):
        stub(channel).ModelInfer(raw_request("id_fp32", "x", "FP32", x))
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub(channel).ModelInfer(raw_request("id_fp32", "x", "INT32", x.astype(np.int32)))
    assert _metric(port, ok) - before_ok == 11
    assert _metric(port, bad) - before_bad == 3
    assert _metric(port, 'gateway_request_latency_seconds_count{model="id_fp32",version="1"}') \
        >= 14


def test_http_health_endpoints(core_server) -> None:
    port = core_server.http_port
    for path, key in (("/v2/health/live", b'"live": true'), ("/v2/health/ready", b'"ready": true')):
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read()
        assert key in body


def test_grpc_health_per_model(channel: grpc.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="logreg")).status == \
        health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_inference_service(channel: grpc.Channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "inference.GRPCInferenceService" in names


def test_repository_control_refused_without_permission(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub(channel).RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="logreg"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "allow_repository_control" in (info.value.details() or "")
    index = stub(channel).RepositoryIndex(pb.RepositoryIndexRequest())
    assert ("logreg", "1", "READY") in {(m.name, m.version, m.state) for m in index.models}


def test_in_flight_work_for_many_threads_keeps_serving(channel: grpc.Channel) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda i: stub(channel).ModelInfer(
                raw_request("logreg", "features", "FP32", features(1), id=f"t{i}")).id,
            range(64)))
    assert results == [f"t{i}" for i in range(64)]
