"""Signatures read from ONNX bytes, and the test-model builders they are read from."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.metrics import roc_auc_score

from lifecycle.bootstrap import FRAUD_SIGNATURE
from lifecycle.domain import Signature, TensorSpec
from lifecycle.errors import InvalidArtifact
from lifecycle.onnx_inspect import ONNX_TO_V2, V2_TO_ONNX, signature_from_onnx
from lifecycle.synthetic import FraudGenerator
from tests.onnx_models import (
    IR_VERSION,
    OPSET,
    V2_DATATYPES,
    example_array,
    fixed_shape_model,
    identity_model,
    logreg_like_model,
    mlp_model,
    runtime_failure_model,
    two_output_model,
)


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _spec(name: str, datatype: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, datatype, tuple(shape))


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    return model.SerializeToString()


def test_table_covers_exactly_the_v2_datatypes() -> None:
    assert sorted(ONNX_TO_V2.values()) == sorted(V2_DATATYPES)
    assert len(V2_DATATYPES) == 13
    assert all(ONNX_TO_V2[V2_TO_ONNX[name]] == name for name in V2_DATATYPES)
    assert ONNX_TO_V2[TensorProto.STRING] == "BYTES"
    assert ONNX_TO_V2[TensorProto.FLOAT16] == "FP16"


@pytest.mark.parametrize("datatype", V2_DATATYPES)
def test_identity_model_of_every_datatype_reads_back_and_runs(datatype: str) -> None:
    data = identity_model(datatype)
    assert signature_from_onnx(data) == Signature(
        inputs=(_spec("x", datatype, -1, 4),), outputs=(_spec("y", datatype, -1, 4),)
    )
    x = example_array(datatype, (3, 4))
    if datatype == "BYTES":
        # onnxruntime's string tensors are str in and str out (see example_array).
        assert all(isinstance(v, bytes) for v in x.ravel())
        x = np.vectorize(bytes.decode, otypes=[object])(x)
    (y,) = _session(data).run(None, {"x": x})
    assert y.shape == (3, 4)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, x)


def test_onnxruntime_string_tensors_take_str_not_bytes() -> None:
    """Pins the onnxruntime behaviour the gateway's BYTES conversion has to handle."""
    session = _session(identity_model("BYTES", shape=(-1,)))
    (y,) = session.run(None, {"x": np.array(["ab", "é"], dtype=object)})
    assert y.tolist() == ["ab", "é"]
    (y,) = session.run(None, {"x": np.array([b"ab"], dtype=object)})
    assert y.tolist() == ["b'ab'"]


def test_identity_model_takes_shape_and_names() -> None:
    data = identity_model("INT32", shape=(-1, -1, 3), input_name="in", output_name="out")
    assert signature_from_onnx(data) == Signature(
        inputs=(_spec("in", "INT32", -1, -1, 3),), outputs=(_spec("out", "INT32", -1, -1, 3),)
    )
    x = example_array("INT32", (2, 5, 3))
    np.testing.assert_array_equal(_session(data).run(None, {"in": x})[0], x)
    with pytest.raises(ValueError, match="unknown V2 datatype"):
        identity_model("FLOAT")


def test_two_output_model() -> None:
    data = two_output_model()
    assert signature_from_onnx(data) == Signature(
        inputs=(_spec("a", "FP32", -1, 3),),
        outputs=(
            _spec("sum", "FP32", -1, 3),
            _spec("double", "FP32", -1, 3),
            _spec("argmax", "INT64", -1),
        ),
    )
    a = np.array([[1.0, 5.0, 2.0], [-1.0, -3.0, 0.5]], dtype=np.float32)
    total, double, argmax = _session(data).run(None, {"a": a})
    np.testing.assert_array_equal(total, a + 1)
    np.testing.assert_array_equal(double, a * 2)
    np.testing.assert_array_equal(argmax, [1, 2])
    (only,) = _session(data).run(["argmax"], {"a": a})
    assert only.dtype == np.int64


def test_fixed_shape_model_has_no_dynamic_dims_and_enforces_them() -> None:
    data = fixed_shape_model()
    assert signature_from_onnx(data) == Signature(
        inputs=(_spec("x", "FP32", 2, 3),), outputs=(_spec("y", "FP32", 2, 3),)
    )
    session = _session(data)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x * 2)
    with pytest.raises(Exception, match="Got invalid dimensions"):
        session.run(None, {"x": np.zeros((3, 3), dtype=np.float32)})


def test_runtime_failure_model_warms_up_then_fails_on_a_bad_index() -> None:
    data = runtime_failure_model()
    assert signature_from_onnx(data) == Signature(
        inputs=(_spec("data", "FP32", -1, 4), _spec("indices", "INT64", -1)),
        outputs=(_spec("gathered", "FP32", -1, -1),),
    )
    session = _session(data)
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    for warm in (np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64)):
        session.run(None, {"data": np.zeros((1, 4), dtype=np.float32), "indices": warm})
    (out,) = session.run(None, {"data": rows, "indices": np.array([3, 0], dtype=np.int64)})
    np.testing.assert_array_equal(out, [[3.0, 0.0], [7.0, 4.0]])
    with pytest.raises(Exception, match="out of data bounds"):
        session.run(None, {"data": rows, "indices": np.array([10], dtype=np.int64)})


def test_mlp_model() -> None:
    data = mlp_model(in_dim=8, hidden=(16, 16), out_dim=3, seed=1)
    assert signature_from_onnx(data) == Signature(
        inputs=(_spec("x", "FP32", -1, 8),), outputs=(_spec("y", "FP32", -1, 3),)
    )
    x = example_array("FP32", (5, 8))
    (y,) = _session(data).run(None, {"x": x})
    assert y.shape == (5, 3) and y.dtype == np.float32 and np.isfinite(y).all()
    assert mlp_model(in_dim=8, hidden=(16, 16), out_dim=3, seed=1) == data
    assert mlp_model(in_dim=8, hidden=(16, 16), out_dim=3, seed=2) != data
    default = signature_from_onnx(mlp_model())
    assert default.inputs == (_spec("x", "FP32", -1, 64),)
    assert default.outputs == (_spec("y", "FP32", -1, 10),)


def test_logreg_like_model_is_a_working_second_version_of_fraud() -> None:
    data = logreg_like_model()
    assert signature_from_onnx(data) == FRAUD_SIGNATURE
    assert FRAUD_SIGNATURE.mismatch(signature_from_onnx(data)) is None
    X, y = FraudGenerator(11).sample(4_000)
    label, probabilities = _session(data).run(None, {"features": X})
    assert label.dtype == np.int64 and label.shape == (4_000,)
    assert probabilities.dtype == np.float32 and probabilities.shape == (4_000, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(label, probabilities.argmax(axis=1))
    assert roc_auc_score(y, probabilities[:, 1]) >= 0.85
    narrow = signature_from_onnx(logreg_like_model(n_features=5))
    assert narrow.inputs == (_spec("features", "FP32", -1, 5),)


def test_initializers_listed_as_inputs_are_not_inputs() -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "with_initializer_input",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        initializer=[numpy_helper.from_array(np.ones(2, dtype=np.float32), "bias")],
    )
    assert signature_from_onnx(_model(graph)).inputs == (_spec("x", "FP32", -1, 2),)


def test_dims_without_value_or_name_are_dynamic() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "unnamed_dims",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 7])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 7])],
    )
    signature = signature_from_onnx(_model(graph))
    assert signature.inputs == (_spec("x", "FP64", -1, 7),)
    assert signature.outputs == (_spec("y", "FP64", -1, 7),)


def test_a_missing_output_shape_is_inferred() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "no_output_shape",
        [helper.make_tensor_value_info("x", TensorProto.INT16, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT16, None)],
    )
    assert signature_from_onnx(_model(graph)).outputs == (_spec("y", "INT16", -1, 3),)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an onnx model at all", bytes(range(256)) * 4, b"\x08\x07"],
    ids=["empty", "text", "noise", "ir-version-only"],
)
def test_bytes_that_are_not_onnx_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidArtifact, match="not (an|a valid) ONNX model"):
        signature_from_onnx(data)


def test_a_truncated_model_is_invalid() -> None:
    data = mlp_model(in_dim=4, hidden=(8,), out_dim=2)
    with pytest.raises(InvalidArtifact):
        signature_from_onnx(data[: len(data) // 2])


def test_an_unsupported_element_type_names_the_tensor_and_the_type() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["half_brain"], ["y"])],
        "bf16",
        [helper.make_tensor_value_info("half_brain", TensorProto.BFLOAT16, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["n", 2])],
    )
    with pytest.raises(InvalidArtifact, match=r"input 'half_brain'.*BFLOAT16"):
        signature_from_onnx(_model(graph))


def test_a_non_tensor_input_is_invalid() -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["items"], ["n"])],
        "sequence_input",
        [
            helper.make_tensor_sequence_value_info("items", TensorProto.FLOAT, None),
        ],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
    )
    with pytest.raises(InvalidArtifact, match=r"input 'items'.*sequence_type"):
        signature_from_onnx(_model(graph))


def test_an_input_of_unknown_rank_is_invalid() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["anything"], ["y"])],
        "unknown_rank",
        [helper.make_tensor_value_info("anything", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(InvalidArtifact, match=r"input 'anything' has no shape"):
        signature_from_onnx(_model(graph))


def test_a_graph_the_checker_rejects_is_invalid() -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "unknown_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
    )
    with pytest.raises(InvalidArtifact, match="not a valid ONNX model.*NoSuchOperator"):
        signature_from_onnx(_model(graph))
