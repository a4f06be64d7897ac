"""Pure converters between the feedback/admin request-log messages and domain types.

Tensor labels arrive in the Open Inference Protocol's raw form and are checked here (a
known datatype, non-negative dims, a byte length that matches the shape), so what is
stored always decodes. Times are integer epoch microseconds on the domain side.
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf import timestamp_pb2

from gateway.datatypes import ELEMENT_SIZE
from gateway.errors import InvalidInput
from gateway.pb import admin_pb2 as apb
from gateway.pb import feedback_pb2 as fpb
from lifecycle.request_records import (
    DATATYPES,
    FeedbackEntry,
    JoinedFeedback,
    Label,
    LoggedRequest,
    Tensor,
)

_LEN = struct.Struct("<I")
MAX_RANK = 32


def timestamp_us(ts: timestamp_pb2.Timestamp) -> int:
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


def timestamp(us: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(us)
    return ts


def tensor_of(message: Any, what: str) -> Tensor:
    """A ``Tensor`` from a wire tensor (``name, datatype, shape`` and the raw bytes in
    ``raw_contents`` or ``data``); ``InvalidInput`` naming ``what`` if malformed."""
    datatype = message.datatype
    if datatype not in DATATYPES:
        raise InvalidInput(f"{what}: unknown datatype '{datatype}', expected one of "
                           f"{', '.join(DATATYPES)}")
    shape = tuple(int(d) for d in message.shape)
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise InvalidInput(f"{what}: expected at most {MAX_RANK} non-negative dimensions, "
                           f"got shape {list(shape)}")
    data = bytes(message.raw_contents if hasattr(message, "raw_contents") else message.data)
    count = 1
    for dim in shape:
        count *= dim
    if datatype == "BYTES":
        _check_bytes(what, data, count)
    elif len(data) != count * ELEMENT_SIZE[datatype]:
        raise InvalidInput(f"{what}: raw contents have {len(data)} bytes, expected "
                           f"{count * ELEMENT_SIZE[datatype]} ({datatype} shape {list(shape)})")
    return Tensor(message.name, datatype, shape, data)


def _check_bytes(what: str, data: bytes, count: int) -> None:
    offset = 0
    for i in range(count):
        if offset + 4 > len(data):
            raise InvalidInput(f"{what}: BYTES contents end after {i} of {count} elements")
        (length,) = _LEN.unpack_from(data, offset)
        offset += 4 + length
        if offset > len(data):
            raise InvalidInput(f"{what}: BYTES element {i} overruns the contents")
    if offset != len(data):
        raise InvalidInput(f"{what}: BYTES contents have {len(data) - offset} bytes past "
                           f"{count} elements")


def label_of(message: Any, what: str = "label") -> Label:
    """The label of a ``Feedback`` or admin ``Label`` message (oneof ``label``/``kind``)."""
    group = "label" if isinstance(message, fpb.Feedback) else "kind"
    kind = message.WhichOneof(group)
    if kind == "class_label":
        return Label("int", int(message.class_label))
    if kind == "value":
        return Label("float", float(message.value))
    if kind == "tensor":
        return Label("tensor", tensor_of(message.tensor, f"{what}.tensor"))
    raise InvalidInput(f"{what}: expected one of class_label, value or tensor, got none")


def feedback_fields(message: fpb.Feedback) -> tuple[str, str, Label, int | None]:
    """``(model, request_id, label, event time µs or None)`` of a ``Feedback``."""
    event = timestamp_us(message.event_time) if message.HasField("event_time") else None
    return message.model, message.request_id, label_of(message), event


# ---------------------------------------------------------------------- to the admin API


def wire_tensor(tensor: Tensor) -> apb.Tensor:
    return apb.Tensor(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape,
                      data=tensor.data)


def wire_label(label: Label) -> apb.Label:
    if label.kind == "int":
        return apb.Label(class_label=int(label.value))  # type: ignore[arg-type]
    if label.kind == "float":
        return apb.Label(value=float(label.value))  # type: ignore[arg-type]
    assert isinstance(label.value, Tensor)
    return apb.Label(tensor=wire_tensor(label.value))


def logged_request(record: LoggedRequest, *, payload: bool = True) -> apb.LoggedRequest:
    message = apb.LoggedRequest(
        record_id=record.record_id, request_id=record.request_id, model=record.model,
        version=record.version, time=timestamp(record.timestamp_us),
        latency_us=record.latency_us, status=record.status,
        metadata=record.metadata, payload_captured=record.payload_captured and payload,
        payload_dropped=record.payload_dropped, arm=record.arm,
        experiment_id=record.experiment_id, routing_key_hash=record.routing_key_hash,
        shadow=record.shadow,
    )
    if payload:
        message.inputs.extend(wire_tensor(t) for t in record.inputs)
        message.outputs.extend(wire_tensor(t) for t in record.outputs)
    joined = record.feedback
    if joined is not None:
        message.feedback.CopyFrom(apb.JoinedFeedback(
            feedback_id=joined.feedback_id, label=wire_label(joined.label),
            event_time=timestamp(joined.timestamp_us),
            receive_time=timestamp(joined.received_at_us), count=joined.count,
        ))
    return message


def unmatched(entry: FeedbackEntry) -> apb.UnmatchedFeedback:
    return apb.UnmatchedFeedback(
        feedback_id=entry.feedback_id, request_id=entry.request_id, model=entry.model,
        label=wire_label(entry.label), event_time=timestamp(entry.timestamp_us),
        receive_time=timestamp(entry.received_at_us),
    )


# ---------------------------------------------------------------------- from the admin API


def from_logged_request(message: apb.LoggedRequest) -> LoggedRequest:
    """The domain record of a ``LoggedRequest`` (what the CLI's export builds its set from)."""
    feedback = None
    if message.HasField("feedback"):
        f = message.feedback
        feedback = JoinedFeedback(
            feedback_id=f.feedback_id, label=label_of(f.label, "feedback.label"),
            timestamp_us=timestamp_us(f.event_time),
            received_at_us=timestamp_us(f.receive_time), count=int(f.count),
        )
    return LoggedRequest(
        record_id=message.record_id, request_id=message.request_id, model=message.model,
        version=int(message.version), timestamp_us=timestamp_us(message.time),
        latency_us=int(message.latency_us), status=message.status,
        inputs=tuple(tensor_of(t, f"inputs[{i}]") for i, t in enumerate(message.inputs)),
        outputs=tuple(tensor_of(t, f"outputs[{i}]") for i, t in enumerate(message.outputs)),
        metadata=dict(message.metadata), payload_dropped=message.payload_dropped,
        payload_captured=message.payload_captured, arm=message.arm,
        experiment_id=message.experiment_id, routing_key_hash=message.routing_key_hash,
        shadow=message.shadow, feedback=feedback,
    )
