"""``server.max_concurrent_rpcs``: calls beyond the limit are shed at once with
RESOURCE_EXHAUSTED, and serving resumes as soon as calls in progress end."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.pb import grpc_service_pb2 as pb
from tests.conftest import write_config
from tests.gateway.test_inference_rpc import raw_request, stub
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

LIMIT = 2


@pytest.fixture
def limited(tmp_path: Path, model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    config = write_config(tmp_path / "gateway.toml", model_files,
                          f"[server]\nmax_concurrent_rpcs = {LIMIT}\n")
    server = InProcessGateway.start_from(config, tmp_path / "data")
    yield server
    server.stop()


def request() -> pb.ModelInferRequest:
    x = np.random.default_rng(0).normal(size=(1, 20)).astype(np.float32)
    return raw_request("logreg", "features", "FP32", x)


def open_stream(channel: grpc.Channel) -> tuple[queue.Queue[object], Iterator[object]]:
    """A ModelStreamInfer call held open (it counts as one RPC in progress) after one reply."""
    outbox: queue.Queue[object] = queue.Queue()
    replies = stub(channel).ModelStreamInfer(iter(outbox.get, None))
    outbox.put(request())
    assert not next(replies).error_message
    return outbox, replies


def test_calls_beyond_the_limit_are_shed_and_serving_resumes(
        limited: InProcessGateway) -> None:
    with grpc.insecure_channel(limited.grpc_address) as channel:
        streams = [open_stream(channel) for _ in range(LIMIT)]
        with pytest.raises(grpc.RpcError) as shed:
            stub(channel).ModelInfer(request(), timeout=10)
        assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        for outbox, replies in streams:
            outbox.put(None)
            assert list(replies) == []
        def answered() -> pb.ModelInferResponse | None:
            try:
                return stub(channel).ModelInfer(request(), timeout=10)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return None

        # The server frees a slot when it has seen the stream end.
        response = wait_until(answered, 10, "a slot freed", interval=0.05)
        assert response.model_name == "logreg"
