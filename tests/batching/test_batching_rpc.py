"""Dynamic batching over a real in-process gateway, through our generated stubs.

Which requests shared a session run is read from ``ModelStatistics``' ``batch_stats`` (one
entry per executed batch size), never from timings: models whose delay is 60 s flush only
when their batch is full, so a test that sees a batch of 4 saw a size-triggered flush.
"""

from __future__ import annotations

import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from gateway.pb import grpc_service_pb2 as pb
from gateway.pb import grpc_service_pb2_grpc as pb_grpc
from tests.batching.conftest import NEVER_US, OPERATOR_TOKEN, POISON_TABLE
from tests.gateway.test_inference_rpc import decode, raw_request
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until


def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def batches(channel: grpc.Channel, model: str) -> dict[int, int]:
    """Executed batch size → how many session runs had it."""
    stats = stub(channel).ModelStatistics(pb.ModelStatisticsRequest(name=model))
    return {b.batch_size: b.compute_infer.count
            for s in stats.model_stats for b in s.batch_stats}


def executions(channel: grpc.Channel, model: str) -> int:
    stats = stub(channel).ModelStatistics(pb.ModelStatisticsRequest(name=model))
    return sum(s.execution_count for s in stats.model_stats)


def delta(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {o.name: decode(response, i) for i, o in enumerate(response.outputs)}


def rows(n: int, seed: int, width: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


def concurrently(channel: grpc.Channel, requests: list[pb.ModelInferRequest],
                 timeout: float = 30) -> list[pb.ModelInferResponse | grpc.RpcError]:
    """Send every request at once (one thread each); answers in request order."""
    def call(request: pb.ModelInferRequest) -> pb.ModelInferResponse | grpc.RpcError:
        try:
            return stub(channel).ModelInfer(request, timeout=timeout)  # type: ignore[no-any-return]
        except grpc.RpcError as error:
            return error
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(call, requests))


def test_a_full_batch_leaves_at_once_and_each_request_gets_its_rows(
        channel: grpc.Channel) -> None:
    before = batches(channel, "sized")
    xs = [rows(1, seed) for seed in range(4)]
    answers = concurrently(channel, [
        raw_request("sized", "a", "FP32", x, id=f"s-{i}") for i, x in enumerate(xs)])
    for i, (x, answer) in enumerate(zip(xs, answers, strict=True)):
        assert isinstance(answer, pb.ModelInferResponse), answer
        assert answer.id == f"s-{i}" and answer.model_version == "1"
        got = outputs(answer)
        np.testing.assert_allclose(got["sum"], x + 1, rtol=1e-6)
        np.testing.assert_allclose(got["double"], x * 2, rtol=1e-6)
        np.testing.assert_array_equal(got["argmax"], x.argmax(axis=1))
    # 60 s delay: only reaching max_batch_size (4 rows) could have sent them.
    assert delta(batches(channel, "sized"), before) == {4: 1}


def test_ids_rows_and_requested_outputs_are_matched_per_request(
        channel: grpc.Channel) -> None:
    """Requests of 1, 2 and 1 rows fill one batch of 4; each asks for other outputs."""
    before = batches(channel, "sized")
    shapes = {"one": 1, "two": 2, "three": 1}
    wanted = {"one": ["double"], "two": ["argmax", "sum"], "three": []}
    xs = {rid: rows(n, seed=10 + i) for i, (rid, n) in enumerate(shapes.items())}
    requests = []
    for rid, x in xs.items():
        request = raw_request("sized", "a", "FP32", x, id=rid)
        for name in wanted[rid]:
            request.outputs.add(name=name)
        requests.append(request)
    answers = concurrently(channel, requests)
    expected = {"sum": lambda x: x + 1, "double": lambda x: x * 2,
                "argmax": lambda x: x.argmax(axis=1)}
    for (rid, x), answer in zip(xs.items(), answers, strict=True):
        assert isinstance(answer, pb.ModelInferResponse), answer
        assert answer.id == rid
        names = [o.name for o in answer.outputs]
        assert names == (wanted[rid] or ["sum", "double", "argmax"])
        for name, array in outputs(answer).items():
            assert array.shape[0] == x.shape[0]
            np.testing.assert_allclose(array, expected[name](x), rtol=1e-6)
    assert delta(batches(channel, "sized"), before) == {4: 1}


def test_a_request_larger_than_max_batch_size_passes_through_alone(
        channel: grpc.Channel) -> None:
    before = batches(channel, "sized")
    x = rows(6, seed=3)
    # The model's delay is 60 s: an answer well before it was not queued.
    answer = stub(channel).ModelInfer(raw_request("sized", "a", "FP32", x, id="big"),
                                      timeout=20)
    assert answer.id == "big"
    np.testing.assert_allclose(outputs(answer)["double"], x * 2, rtol=1e-6)
    assert delta(batches(channel, "sized"), before) == {6: 1}


def test_an_error_reaches_every_member_of_its_batch(channel: grpc.Channel) -> None:
    index = [np.array([[i]], dtype=np.int64) for i in (1, 2, 100, 3)]  # 100: out of range
    answers = concurrently(channel, [
        raw_request("poison", "idx", "INT64", x, id=f"p-{i}") for i, x in enumerate(index)])
    for answer in answers:
        assert isinstance(answer, grpc.RpcError), answer
        assert answer.code() == grpc.StatusCode.INTERNAL
        assert "the model failed to run" in (answer.details() or "")

    # The version keeps serving: a clean batch succeeds.
    good = [np.array([[i]], dtype=np.int64) for i in (0, 9, -1, 4)]
    answers = concurrently(channel, [
        raw_request("poison", "idx", "INT64", x, id=f"g-{i}") for i, x in enumerate(good)])
    for x, answer in zip(good, answers, strict=True):
        assert isinstance(answer, pb.ModelInferResponse), answer
        np.testing.assert_array_equal(decode(answer, 0), POISON_TABLE[x])


def test_the_delay_sends_a_batch_that_never_fills(channel: grpc.Channel) -> None:
    before = batches(channel, "timed")
    x = rows(1, seed=4)
    answer = stub(channel).ModelInfer(raw_request("timed", "a", "FP32", x), timeout=20)
    np.testing.assert_allclose(outputs(answer)["sum"], x + 1, rtol=1e-6)
    assert delta(batches(channel, "timed"), before) == {1: 1}

    before = batches(channel, "timed")
    xs = [rows(1, seed=20 + i) for i in range(5)]
    answers = concurrently(channel, [raw_request("timed", "a", "FP32", x) for x in xs])
    for x, answer in zip(xs, answers, strict=True):
        assert isinstance(answer, pb.ModelInferResponse), answer
        np.testing.assert_allclose(outputs(answer)["sum"], x + 1, rtol=1e-6)
    sent = delta(batches(channel, "timed"), before)
    # max_batch_size is 64: every batch left on its delay. The five requests were sent at
    # once, well within the 0.5 s window of the first, so they shared runs.
    assert sum(size * n for size, n in sent.items()) == 5
    assert max(sent) > 1, sent


def test_a_stream_is_answered_in_order(channel: grpc.Channel,
                                       batching_files: dict[str, Path]) -> None:
    session = ort.InferenceSession(str(batching_files["mlp"]))
    xs = [rows(1 + i % 3, seed=40 + i, width=8) for i in range(24)]
    requests = [raw_request("mlp", "x", "FP32", x, id=f"st-{i}") for i, x in enumerate(xs)]
    replies = list(stub(channel).ModelStreamInfer(iter(requests), timeout=60))
    assert [r.infer_response.id for r in replies] == [f"st-{i}" for i in range(24)]
    for x, reply in zip(xs, replies, strict=True):
        assert not reply.error_message
        (want,) = session.run(["y"], {"x": x})
        np.testing.assert_allclose(decode(reply.infer_response, 0), want, rtol=1e-5, atol=1e-5)


def test_64_concurrent_clients_each_get_their_own_rows(
        channel: grpc.Channel, batching_files: dict[str, Path]) -> None:
    session = ort.InferenceSession(str(batching_files["mlp"]))
    per_client = 6
    before = executions(channel, "mlp")
    infer = stub(channel).ModelInfer

    def client(k: int) -> int:
        for j in range(per_client):
            x = rows(1 + (k + j) % 3, seed=1000 * k + j, width=8)
            rid = f"c{k}-{j}"
            response = infer(raw_request("mlp", "x", "FP32", x, id=rid), timeout=60)
            assert response.id == rid
            (want,) = session.run(["y"], {"x": x})
            np.testing.assert_allclose(decode(response, 0), want, rtol=1e-5, atol=1e-5)
        return per_client

    with ThreadPoolExecutor(64) as pool:
        total = sum(pool.map(client, range(64)))
    assert total == 64 * per_client
    runs = executions(channel, "mlp") - before
    # Batching happened: fewer session runs than requests.
    assert 0 < runs < total, runs


def test_requests_with_other_non_batch_dims_are_not_mixed(channel: grpc.Channel) -> None:
    xs = [rows(1 + i % 2, seed=60 + i, width=3 + 2 * (i % 3)) for i in range(9)]
    answers = concurrently(channel, [raw_request("ragged", "x", "FP32", x) for x in xs])
    for x, answer in zip(xs, answers, strict=True):
        assert isinstance(answer, pb.ModelInferResponse), answer
        np.testing.assert_array_equal(decode(answer, 0), x)


def inflight(server: InProcessGateway, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics",
                                timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf'^gateway_inflight_requests{{model="{model}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_full_queue_sheds_and_a_drain_sends_what_is_queued(
        batching_server: InProcessGateway, channel: grpc.Channel) -> None:
    """``drained``: max_queue_size 2, a 60 s delay. Two requests wait; a third is shed;
    unloading the model drains the version, which sends the two at once."""
    xs = [rows(1, seed=70 + i) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(stub(channel).ModelInfer,
                               raw_request("drained", "a", "FP32", x, id=f"d-{i}"), timeout=30)
                   for i, x in enumerate(xs)]
        wait_until(lambda: inflight(batching_server, "drained") >= 2, 20,
                   "the two requests reaching the queue")

        with pytest.raises(grpc.RpcError) as shed:
            stub(channel).ModelInfer(raw_request("drained", "a", "FP32", rows(1, 9)),
                                     timeout=10)
        assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue_size" in (shed.value.details() or "")
        assert all(not f.done() for f in waiting)

        stub(channel).RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="drained"), timeout=20,
            metadata=(("authorization", f"Bearer {OPERATOR_TOKEN}"),))
        for i, (x, future) in enumerate(zip(xs, waiting, strict=True)):
            answer = future.result(timeout=20)
            assert answer.id == f"d-{i}"
            np.testing.assert_allclose(outputs(answer)["sum"], x + 1, rtol=1e-6)
    assert batches(channel, "drained") == {2: 1}


def test_model_config_reports_batching_and_drops_the_batch_dim(
        channel: grpc.Channel) -> None:
    config = stub(channel).ModelConfig(pb.ModelConfigRequest(name="sized")).config
    assert config.max_batch_size == 4
    assert config.dynamic_batching.max_queue_delay_microseconds == NEVER_US
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert [(i.name, list(i.dims)) for i in config.input] == [("a", [3])]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("sum", [3]), ("double", [3]), ("argmax", [])]

    mlp = stub(channel).ModelConfig(pb.ModelConfigRequest(name="mlp")).config
    assert mlp.max_batch_size == 16
    assert list(mlp.dynamic_batching.preferred_batch_size) == [4, 8]
    assert mlp.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(i.name, list(i.dims)) for i in mlp.input] == [("x", [8])]

    # ModelMetadata keeps the full shapes, -1 for the batch dim.
    meta = stub(channel).ModelMetadata(pb.ModelMetadataRequest(name="sized"))
    assert [(t.name, list(t.shape)) for t in meta.inputs] == [("a", [-1, 3])]
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [
        ("sum", [-1, 3]), ("double", [-1, 3]), ("argmax", [-1])]


def test_batching_a_model_without_a_batch_dim_fails_its_load_by_name(
        channel: grpc.Channel) -> None:
    index = stub(channel).RepositoryIndex(pb.RepositoryIndexRequest())
    (fixed,) = [m for m in index.models if m.name == "fixed"]
    assert fixed.state == "UNAVAILABLE"
    assert "model 'fixed' has dynamic_batching" in fixed.reason
    assert "input 'x' has shape [2, 3]" in fixed.reason
    with pytest.raises(grpc.RpcError) as error:
        stub(channel).ModelInfer(raw_request("fixed", "x", "FP32", rows(2, 1)), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    # Its config describes it as it is: no batch dim, so no batching.
    config = stub(channel).ModelConfig(pb.ModelConfigRequest(name="fixed")).config
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [2, 3]
