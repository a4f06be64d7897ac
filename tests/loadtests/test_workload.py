"""Input specs, payload generators and the pre-serialized request pool."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.errors import WorkloadError
from loadtests.wire import TensorInfo, decode_infer_request
from loadtests.workload import (
    DATATYPES,
    NpyPayload,
    RandomPayload,
    RequestExtras,
    TensorSpec,
    build_pool,
    specs_from_metadata,
)


def test_input_spec_parses_name_datatype_and_shape() -> None:
    assert TensorSpec.parse("input:fp32:1,20") == TensorSpec("input", "FP32", (1, 20))


@pytest.mark.parametrize(
    "text",
    ["input:FP32", "input:FLOAT:1,20", "input:FP32:1,x", "input:FP32:0,20", "input:FP32:-1,20"],
)
def test_bad_input_specs_say_what_is_wrong(text: str) -> None:
    with pytest.raises(WorkloadError, match="input"):
        TensorSpec.parse(text)


def test_discovered_variable_batch_becomes_the_batch_size() -> None:
    specs = specs_from_metadata([TensorInfo("x", "FP32", (-1, 20))], batch=8)
    assert specs == [TensorSpec("x", "FP32", (8, 20))]


def test_discovered_variable_feature_dimension_needs_an_explicit_input() -> None:
    with pytest.raises(WorkloadError, match="--input x:FP32"):
        specs_from_metadata([TensorInfo("x", "FP32", (-1, -1))])


def test_bytes_inputs_cannot_be_generated() -> None:
    with pytest.raises(WorkloadError, match="BYTES"):
        specs_from_metadata([TensorInfo("s", "BYTES", (1,))])


def test_pool_is_pre_serialized_and_reproducible_from_the_seed() -> None:
    spec = TensorSpec("x", "FP32", (2, 3))
    a = build_pool("m", "2", [spec], RandomPayload("normal", seed=5), 10)
    b = build_pool("m", "2", [spec], RandomPayload("normal", seed=5), 10)
    c = build_pool("m", "2", [spec], RandomPayload("normal", seed=6), 10)
    assert a.payloads == b.payloads and a.payloads != c.payloads
    assert len(set(a.payloads)) == 10  # distinct requests
    model, version, params, tensors = decode_infer_request(a.payloads[0])
    assert (model, version, params) == ("m", "2", {})
    expected = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    assert tensors[0].shape == (2, 3) and tensors[0].datatype == "FP32"
    np.testing.assert_array_equal(
        np.frombuffer(tensors[0].data, np.float32).reshape(2, 3), expected
    )


def test_uniform_payload_stays_in_the_unit_interval() -> None:
    pool = build_pool("m", "", [TensorSpec("x", "FP64", (50, 4))], RandomPayload("uniform", 1), 3)
    data = np.frombuffer(decode_infer_request(pool.payloads[1])[3][0].data, np.float64)
    assert data.min() >= 0 and data.max() < 1


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_supported_datatype_serializes_at_its_width(datatype: str) -> None:
    pool = build_pool("m", "", [TensorSpec("x", datatype, (3, 2))], RandomPayload(), 1)
    tensor = decode_infer_request(pool.payloads[0])[3][0]
    assert len(tensor.data) == 6 * DATATYPES[datatype].itemsize


def test_npy_rows_are_taken_in_order_and_wrap_around(tmp_path) -> None:
    rows = np.arange(5 * 4, dtype=np.float64).reshape(5, 4)
    path = tmp_path / "rows.npy"
    np.save(path, rows)
    pool = build_pool("m", "", [TensorSpec("x", "FP32", (2, 4))], NpyPayload({"x": path}), 3)
    got = [
        np.frombuffer(decode_infer_request(p)[3][0].data, np.float32).reshape(2, 4)
        for p in pool.payloads
    ]
    np.testing.assert_array_equal(got[0], rows[[0, 1]])
    np.testing.assert_array_equal(got[2], rows[[4, 0]])  # wrapped


def test_npy_with_the_wrong_row_shape_is_refused(tmp_path) -> None:
    path = tmp_path / "rows.npy"
    np.save(path, np.zeros((5, 3)))
    with pytest.raises(WorkloadError, match="does not match"):
        build_pool("m", "", [TensorSpec("x", "FP32", (1, 4))], NpyPayload({"x": path}), 1)


def test_parameters_and_metadata_per_request_for_routing_keys() -> None:
    pool = build_pool(
        "m",
        "",
        [TensorSpec("x", "FP32", (1, 2))],
        RandomPayload(),
        4,
        parameters={"priority": 3, "sampled": True},
        metadata=(("tenant", "a"),),
        per_request=lambda i: RequestExtras({"routing_key": f"user-{i % 2}"}, (("k", str(i)),)),
    )
    params = decode_infer_request(pool.payloads[3])[2]
    assert params == {"priority": 3, "sampled": True, "routing_key": "user-1"}
    assert pool.metadata[3] == (("tenant", "a"), ("k", "3"))


def test_empty_pool_is_refused() -> None:
    with pytest.raises(WorkloadError, match="pool-size"):
        build_pool("m", "", [TensorSpec("x", "FP32", (1, 2))], RandomPayload(), 0)
