"""A batching model seen by an unmodified ``tritonclient`` the way perf_analyzer sees it:
``ModelConfig`` gives ``max_batch_size`` and dims without the batch dim, and requests
carry a batch dim of 1 (or more) in front of them."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc

from tests.support.subprocess_gateway import SubprocessGateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            model_files: dict[str, Path]) -> Iterator[SubprocessGateway]:
    root = tmp_path_factory.mktemp("triton-batching")
    config = root / "gateway.toml"
    config.write_text(
        f'[models.mlp]\nartifact = "{model_files["mlp"]}"\n'
        "[models.mlp.dynamic_batching]\nmax_batch_size = 8\nmax_queue_delay_us = 500\n"
        "preferred_batch_sizes = [4, 8]\n")
    with SubprocessGateway(config, root / "data", "--log-level", "WARNING") as gw:
        yield gw


def test_model_config_drops_the_batch_dim(gateway: SubprocessGateway) -> None:
    client = tc.InferenceServerClient(gateway.grpc_address)
    try:
        config = client.get_model_config("mlp", as_json=True)["config"]
        meta = client.get_model_metadata("mlp", as_json=True)
    finally:
        client.close()
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["64"]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": ["10"]}]
    assert config["dynamic_batching"] == {"preferred_batch_size": [4, 8],
                                          "max_queue_delay_microseconds": "500"}
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "64"]}]


def test_perf_analyzer_style_requests_are_batched_and_split_back(
        gateway: SubprocessGateway, model_files: dict[str, Path]) -> None:
    session = ort.InferenceSession(str(model_files["mlp"]))

    def infer(k: int) -> None:
        client = tc.InferenceServerClient(gateway.grpc_address)
        try:
            for j in range(10):
                x = np.random.default_rng(100 * k + j).normal(
                    size=(1 if j % 3 else 2, 64)).astype(np.float32)
                item = tc.InferInput("x", list(x.shape), "FP32")
                item.set_data_from_numpy(x)
                result = client.infer("mlp", [item], request_id=f"pa-{k}-{j}")
                assert result.get_response().id == f"pa-{k}-{j}"
                (want,) = session.run(["y"], {"x": x})
                np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-5, atol=1e-5)
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(infer, range(8)))
    client = tc.InferenceServerClient(gateway.grpc_address)
    try:
        stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    finally:
        client.close()
    sizes = {int(b["batch_size"]) for b in stats["batch_stats"]}
    assert sizes and max(sizes) <= 8
    rows = sum(1 if j % 3 else 2 for j in range(10))
    assert int(stats["inference_count"]) == 8 * rows
