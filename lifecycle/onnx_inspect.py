"""Read a model's serving signature from ONNX bytes, without running it.

Only the ``onnx`` package is used (protobuf parsing, shape inference and the
checker); nothing is executed and nothing is unpickled, so this is safe on
untrusted uploads.
"""

from __future__ import annotations

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from lifecycle.domain import Signature, TensorSpec
from lifecycle.errors import InvalidArtifact

__all__ = ["ONNX_TO_V2", "V2_TO_ONNX", "signature_from_onnx"]

ONNX_TO_V2: dict[int, str] = {
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.STRING: "BYTES",
}
"""ONNX ``TensorProto.DataType`` → Open Inference Protocol datatype."""

V2_TO_ONNX: dict[str, int] = {v2: elem for elem, v2 in ONNX_TO_V2.items()}


def signature_from_onnx(data: bytes) -> Signature:
    """The inputs (initializers excluded) and outputs of the model's main graph.

    Dimensions are ``dim_value`` when fixed and ``-1`` when symbolic or unknown.
    If a graph input or output declares no shape, ONNX shape inference fills
    it in when it can.

    Raises:
        InvalidArtifact: the bytes are not a valid ONNX model, a tensor is not a
            plain tensor, its element type has no V2 datatype, or its rank
            cannot be known. The message names the tensor and the type.
    """
    model = _parse(data)
    if not _all_shapes_declared(model.graph):
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
            raise InvalidArtifact(f"ONNX shape inference failed: {_first_line(str(exc))}") from exc
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {
        t.values.name for t in graph.sparse_initializer
    }
    inputs = tuple(_spec("input", vi) for vi in graph.input if vi.name not in initializers)
    outputs = tuple(_spec("output", vi) for vi in graph.output)
    if not inputs:
        raise InvalidArtifact("ONNX graph has no inputs (other than initializers)")
    if not outputs:
        raise InvalidArtifact("ONNX graph has no outputs")
    # The checker runs after the per-tensor checks so that those name the
    # offending tensor; it catches everything else (unknown ops, bad graphs).
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InvalidArtifact(f"not a valid ONNX model: {_first_line(str(exc))}") from exc
    return Signature(inputs=inputs, outputs=outputs)


def _parse(data: bytes) -> onnx.ModelProto:
    if not data:
        raise InvalidArtifact("not an ONNX model: the artifact is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidArtifact(f"not an ONNX model: protobuf decoding failed ({exc})") from exc
    # Arbitrary bytes sometimes decode into a ModelProto of stray fields.
    if model.ir_version < 3 or not model.opset_import or not model.HasField("graph"):
        raise InvalidArtifact(
            "not an ONNX model: it lacks an IR version >= 3, an opset import or a graph"
        )
    return model


def _all_shapes_declared(graph: onnx.GraphProto) -> bool:
    return all(
        vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
        for vi in (*graph.input, *graph.output)
    )


def _spec(kind: str, vi: onnx.ValueInfoProto) -> TensorSpec:
    which = vi.type.WhichOneof("value")
    if which != "tensor_type":
        raise InvalidArtifact(
            f"{kind} '{vi.name}' has ONNX type {which or 'unset'}; only tensors are supported"
        )
    tensor = vi.type.tensor_type
    datatype = ONNX_TO_V2.get(tensor.elem_type)
    if datatype is None:
        raise InvalidArtifact(
            f"{kind} '{vi.name}' has ONNX element type {_elem_name(tensor.elem_type)}, "
            f"which has no Open Inference Protocol datatype "
            f"(supported: {', '.join(_elem_name(e) for e in ONNX_TO_V2)})"
        )
    if not tensor.HasField("shape"):
        raise InvalidArtifact(f"{kind} '{vi.name}' has no shape, so its rank is unknown")
    shape = tuple(
        dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim
    )
    return TensorSpec(name=vi.name, datatype=datatype, shape=shape)


def _elem_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"<unknown {elem_type}>"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "validation failed"
