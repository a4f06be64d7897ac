"""Tiny ONNX models built with ``onnx.helper`` for tests; each builder returns bytes.

Every model uses opset 17 and IR version 9 (both load in onnxruntime 1.32) and
passes ``onnx.checker``. A ``-1`` in a shape becomes a symbolic dimension
(``batch`` for the first axis, ``dim<i>`` for the others), so signatures read
back with ``-1`` there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "IR_VERSION",
    "OPSET",
    "V2_DATATYPES",
    "example_array",
    "fixed_shape_model",
    "identity_model",
    "logreg_like_model",
    "mlp_model",
    "runtime_failure_model",
    "two_output_model",
]

OPSET = 17
IR_VERSION = 9

_V2_TO_ONNX: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
V2_DATATYPES: tuple[str, ...] = tuple(_V2_TO_ONNX)


def identity_model(
    datatype: str,
    shape: Sequence[int] = (-1, 4),
    input_name: str = "x",
    output_name: str = "y",
) -> bytes:
    """``output = Identity(input)`` for any V2 datatype (BYTES is an ONNX string tensor)."""
    elem = _elem(datatype)
    node = helper.make_node("Identity", [input_name], [output_name])
    graph = helper.make_graph(
        [node],
        f"identity_{datatype.lower()}",
        [_value_info(input_name, elem, shape)],
        [_value_info(output_name, elem, shape)],
    )
    return _serialize(graph)


def two_output_model() -> bytes:
    """Input ``a`` FP32 [-1,3]; outputs ``sum`` = a+1, ``double`` = a*2 (FP32 [-1,3])
    and ``argmax`` = argmax(a, axis=1) (INT64 [-1])."""
    nodes = [
        helper.make_node("Add", ["a", "one"], ["sum"]),
        helper.make_node("Mul", ["a", "two"], ["double"]),
        helper.make_node("ArgMax", ["a"], ["argmax"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "two_output",
        [_value_info("a", TensorProto.FLOAT, (-1, 3))],
        [
            _value_info("sum", TensorProto.FLOAT, (-1, 3)),
            _value_info("double", TensorProto.FLOAT, (-1, 3)),
            _value_info("argmax", TensorProto.INT64, (-1,)),
        ],
        initializer=[
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        ],
    )
    return _serialize(graph)


def fixed_shape_model() -> bytes:
    """Input ``x`` FP32 of exactly [2,3] (no dynamic dim); output ``y`` = x*2, FP32 [2,3]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fixed_shape",
        [_value_info("x", TensorProto.FLOAT, (2, 3))],
        [_value_info("y", TensorProto.FLOAT, (2, 3))],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    return _serialize(graph)


def runtime_failure_model() -> bytes:
    """A model that loads and runs, but fails inside onnxruntime on a bad index.

    Inputs ``data`` FP32 [-1,4] and ``indices`` INT64 [-1]; output ``gathered``
    FP32 [-1,-1] = ``Gather(data, indices, axis=1)``. Every index in [-4, 3]
    works, so warm-up with zeros or ones succeeds; an index outside that range
    (e.g. ``indices=[10]``) makes ``session.run`` raise an onnxruntime error
    (INVALID_ARGUMENT, "indices element out of data bounds").
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", ["data", "indices"], ["gathered"], axis=1)],
        "runtime_failure",
        [
            _value_info("data", TensorProto.FLOAT, (-1, 4)),
            _value_info("indices", TensorProto.INT64, (-1,), ["n_indices"]),
        ],
        [_value_info("gathered", TensorProto.FLOAT, (-1, -1), ["batch", "n_indices"])],
    )
    return _serialize(graph)


def mlp_model(
    in_dim: int = 64,
    hidden: Sequence[int] = (512, 512),
    out_dim: int = 10,
    seed: int = 0,
) -> bytes:
    """Input ``x`` FP32 [-1,in_dim] → (MatMul+Add+Relu per hidden layer) → MatMul+Add →
    output ``y`` FP32 [-1,out_dim]. He-initialised weights from ``seed``."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current, width = "x", in_dim
    sizes = [*hidden, out_dim]
    for i, size in enumerate(sizes):
        w = (rng.standard_normal((width, size)) * np.sqrt(2.0 / width)).astype(np.float32)
        b = np.zeros(size, dtype=np.float32)
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 1
        out = "y" if last else f"h{i}"
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [out if last else f"pre{i}"]),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"pre{i}"], [out]))
        current, width = out, size
    graph = helper.make_graph(
        nodes,
        "mlp",
        [_value_info("x", TensorProto.FLOAT, (-1, in_dim))],
        [_value_info("y", TensorProto.FLOAT, (-1, out_dim))],
        initializer=initializers,
    )
    return _serialize(graph)


def logreg_like_model(n_features: int = 20, seed: int = 1) -> bytes:
    """A second "version" of the fraud demo: same signature, different weights and ops.

    Input ``features`` FP32 [-1,n_features]; outputs ``label`` INT64 [-1] and
    ``probabilities`` FP32 [-1,2]. The weights come from a logistic regression
    fitted (C=0.1, on standardised features, folded into the weights) to 2,000
    ``FraudGenerator(seed)`` rows, using the first ``n_features`` columns, so
    it scores fraud sensibly; the graph is plain MatMul/Add/Sigmoid/Concat/ArgMax
    rather than skl2onnx's LinearClassifier.
    """
    from sklearn.linear_model import LogisticRegression

    from lifecycle.synthetic import N_FEATURES, FraudGenerator

    if not 1 <= n_features <= N_FEATURES:
        raise ValueError(f"n_features must be within [1, {N_FEATURES}], got {n_features}")
    X, y = FraudGenerator(seed).sample(2000)
    X = X[:, :n_features].astype(np.float64)
    mean, std = X.mean(axis=0), X.std(axis=0)
    std[std == 0] = 1.0
    clf = LogisticRegression(C=0.1, max_iter=1000).fit((X - mean) / std, y)
    coef = clf.coef_[0] / std
    intercept = clf.intercept_[0] - float(np.dot(coef, mean))
    nodes = [
        helper.make_node("MatMul", ["features", "coef"], ["score"]),
        helper.make_node("Add", ["score", "intercept"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p1"]),
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "fraud_logreg_like",
        [_value_info("features", TensorProto.FLOAT, (-1, n_features))],
        [
            _value_info("label", TensorProto.INT64, (-1,)),
            _value_info("probabilities", TensorProto.FLOAT, (-1, 2)),
        ],
        initializer=[
            numpy_helper.from_array(coef.reshape(-1, 1).astype(np.float32), "coef"),
            numpy_helper.from_array(np.array([intercept], dtype=np.float32), "intercept"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ],
    )
    return _serialize(graph)


def example_array(datatype: str, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A deterministic array of ``shape`` (no -1) whose numpy dtype matches ``datatype``.

    BYTES gives an object array of ASCII ``bytes`` (what a V2 client sends).
    To feed onnxruntime directly, decode them to ``str`` first: its Python
    binding turns a ``bytes`` element into its repr (``b'ab'`` → ``"b'ab'"``)
    and returns string tensors as ``str``.
    """
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    if datatype == "BYTES":
        values = [f"s{int(v)}".encode() for v in rng.integers(0, 1000, size)]
        return np.array(values, dtype=object).reshape(tuple(shape))
    if datatype == "BOOL":
        return rng.integers(0, 2, size).astype(np.bool_).reshape(tuple(shape))
    dtype = helper.tensor_dtype_to_np_dtype(_elem(datatype))
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(size).astype(dtype).reshape(tuple(shape))
    low = -100 if np.issubdtype(dtype, np.signedinteger) else 0
    return rng.integers(low, 100, size).astype(dtype).reshape(tuple(shape))


def _elem(datatype: str) -> int:
    try:
        return _V2_TO_ONNX[datatype]
    except KeyError:
        raise ValueError(
            f"unknown V2 datatype '{datatype}'; expected one of {', '.join(V2_DATATYPES)}"
        ) from None


def _value_info(
    name: str, elem: int, shape: Sequence[int], symbols: Sequence[str] = ()
) -> onnx.ValueInfoProto:
    """``symbols`` names the dynamic dims in order (default ``batch``, ``dim1``…)."""
    names = iter(symbols)
    dims: list[int | str] = [
        next(names, "batch" if i == 0 else f"dim{i}") if d == -1 else d
        for i, d in enumerate(shape)
    ]
    return helper.make_tensor_value_info(name, elem, dims)


def _serialize(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="tests.onnx_models",
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
