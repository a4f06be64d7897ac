"""Pure protobuf ⇄ numpy converters for the V2 protocol; tested without a server.

Decoding validates what the wire format alone can tell (negative dims, byte lengths,
typed vs raw contents); the data plane then checks the inputs against the model.
Raw contents are read with ``np.frombuffer``: no copy.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from gateway.datatypes import ELEMENT_SIZE, V2_TO_NUMPY
from gateway.errors import InvalidInput
from gateway.pb import grpc_service_pb2 as pb
from gateway.types import InferInput, InferRequest, InferResponse

# The typed-contents field that carries each datatype.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LEN = struct.Struct("<I")
# Beyond this numpy cannot even shape the array (its own limit is 32 or 64 by version);
# the feedback tensors use the same bound.
MAX_RANK = 32


def parameters_to_dict(params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else None
    return out


def decode_request(request: pb.ModelInferRequest, deadline: float | None) -> InferRequest:
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw and len(raw) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries, expected one per input "
            f"({len(inputs)})"
        )
    decoded = []
    for index, tensor in enumerate(inputs):
        has_typed = tensor.HasField("contents")
        if raw and has_typed:
            raise InvalidInput(
                f"input '{tensor.name}': contents and raw_input_contents cannot be mixed in "
                "one request"
            )
        array = _decode_tensor(tensor, raw[index] if raw else None)
        decoded.append(InferInput(tensor.name, tensor.datatype, array))
    return InferRequest(
        model=request.model_name,
        version=request.model_version,
        id=request.id,
        inputs=decoded,
        requested_outputs=[o.name for o in request.outputs],
        parameters=parameters_to_dict(request.parameters) if request.parameters else {},
        deadline=deadline,
    )


def _decode_tensor(tensor: Any, raw: bytes | None) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"input '{name}': unknown datatype '{datatype}', expected one of "
            f"{', '.join(V2_TO_NUMPY)}"
        )
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"input '{name}': expected at most {MAX_RANK} dimensions, got {len(shape)}"
        )
    for dim in shape:
        if dim <= 0:
            raise InvalidInput(
                f"input '{name}': every dimension must be positive, got shape {list(shape)}"
            )
    count = 1
    for dim in shape:
        count *= dim
    if raw is not None:
        if datatype == "BYTES":
            return _decode_bytes(name, raw, count).reshape(shape)
        expected = count * ELEMENT_SIZE[datatype]
        if len(raw) != expected:
            raise InvalidInput(
                f"input '{name}': raw content has {len(raw)} bytes, expected {expected} "
                f"({datatype} shape {list(shape)})"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} data must be sent as raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': contents.{field} has {len(values)} elements, expected {count} "
            f"(shape {list(shape)})"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:  # e.g. 300 in int_contents for INT8
        raise InvalidInput(
            f"input '{name}': contents.{field} holds a value out of range for {datatype} "
            f"({exc})"
        ) from exc


def _decode_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    # Every element takes at least its 4-byte length prefix: checked before allocating,
    # so a tiny request claiming a huge shape cannot make us allocate count pointers.
    if count * _LEN.size > len(raw):
        raise InvalidInput(
            f"input '{name}': raw BYTES content has {len(raw)} bytes, too few for {count} "
            f"elements of at least {_LEN.size} bytes each"
        )
    items = np.empty(count, dtype=object)
    offset = 0
    view = memoryview(raw)
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(
                f"input '{name}': raw BYTES content ends after {i} of {count} elements"
            )
        (length,) = _LEN.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input '{name}': raw BYTES element {i} overruns the content")
        items[i] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidInput(
            f"input '{name}': raw BYTES content has {len(raw) - offset} bytes past "
            f"{count} elements"
        )
    return items


def encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    if response.routing_arm:
        params = message.parameters
        params["routing_arm"].string_param = response.routing_arm
        params["experiment_id"].string_param = response.experiment_id
    outputs = message.outputs
    raw = message.raw_output_contents
    for output in response.outputs:
        array = output.array
        outputs.add(name=output.name, datatype=output.datatype, shape=array.shape)
        if output.datatype == "BYTES":
            raw.append(encode_bytes(array))
        else:
            raw.append(array.tobytes())
    return message
