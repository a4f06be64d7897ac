"""What the serving path hands to the request log, and the journal's record encoding.

``RequestRecord``/``FeedbackRecord`` are built on the serving path and hold *references*
(numpy arrays, raw bytes): nothing is copied or serialized there. The writer thread turns
them into storage entries (``to_request_entry``/``to_feedback_entry``: tensor blobs,
payload policy) and entries into journal payloads (``encode_entry``/``decode_entry``).

Journal payload (little-endian), one per record:

    request  := u8 kind=1 · i64 version · i64 timestamp_us · i64 latency_us · u8 flags
                · u32 length ×10 · record_id · request_id · model · status · arm
                · experiment_id · routing_key_hash · metadata (JSON, or empty) · inputs
                · outputs
    feedback := u8 kind=2 · i64 timestamp_us · i64 received_at_us · u8 label kind
                · u32 length ×4 · feedback_id · request_id · model · label

``flags``: 1 payload dropped, 2 shadow, 4 inputs present, 8 outputs present. A label is
an i64 (class), an f64 (value) or a tensor blob.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.request_log.policy import LoggingPolicy
from lifecycle.request_records import (
    FeedbackEntry,
    Label,
    RequestEntry,
    Tensor,
    TensorSource,
    decode_tensors,
    encode_tensors,
)

__all__ = [
    "FeedbackRecord",
    "RecordIds",
    "RequestRecord",
    "decode_entry",
    "encode_entry",
    "new_record_id",
    "to_feedback_entry",
    "to_request_entry",
]

# Column widths of the request_log/feedback tables: longer values are cut at the
# writer so that one oversized field can never make a whole batch fail.
_WIDTH = {"request_id": 256, "model": 128, "status": 32, "arm": 64, "experiment_id": 128,
          "routing_key_hash": 64, "id": 32}


def new_record_id(timestamp_us: int) -> str:
    """32 hex digits: the millisecond of ``timestamp_us`` (48 bits), then 80 random bits.

    Sorting ids sorts records by millisecond; ids from any process never collide in
    practice (80 bits from the OS random source)."""
    value = ((timestamp_us // 1000) & 0xFFFF_FFFF_FFFF) << 80
    return f"{value | int.from_bytes(os.urandom(10)):032x}"


class RecordIds:
    """Record ids without a syscall each (``os.urandom`` costs a microsecond on the serving
    path): 32 hex digits = the millisecond of the timestamp (48 bits), 40 random bits drawn
    once per instance, then a 40-bit counter.

    Sorting ids sorts records by millisecond. Unique within an instance; two instances
    (e.g. processes) collide only if they draw the same 40 bits *and* reach the same count
    in the same millisecond. Thread-safe (``itertools.count`` is atomic under the GIL)."""

    def __init__(self) -> None:
        self._salt = int.from_bytes(os.urandom(5)) << 40
        self._counter = itertools.count()

    def next(self, timestamp_us: int) -> str:
        ms = (timestamp_us // 1000) & 0xFFFF_FFFF_FFFF
        return f"{ms << 80 | self._salt | (next(self._counter) & 0xFF_FFFF_FFFF):032x}"


@dataclass(slots=True)
class RequestRecord:
    """One inference, as the data plane reports it. ``log()`` fills ``record_id`` and
    ``timestamp_us`` (epoch µs, ``time.time()``) when left empty. The arrays in ``inputs``
    and ``outputs`` are kept by reference until the writer encodes them: the caller must
    not modify them afterwards. ``metadata`` is already whitelisted by the caller."""

    model: str
    version: int
    request_id: str = ""
    inputs: Sequence[Tensor | TensorSource] = ()
    outputs: Sequence[Tensor | TensorSource] = ()
    status: str = "OK"
    latency_us: int = 0
    timestamp_us: int = 0
    metadata: Mapping[str, str] | None = None
    record_id: str = ""
    payload_dropped: bool = False
    arm: str = ""
    experiment_id: str = ""
    routing_key_hash: str = ""
    shadow: bool = False


@dataclass(slots=True)
class FeedbackRecord:
    """One ground-truth submission. ``timestamp_us`` is the client's optional event time;
    ``log_feedback()`` fills ``feedback_id`` and ``received_at_us`` when left empty."""

    model: str
    request_id: str
    label: Label
    timestamp_us: int | None = None
    feedback_id: str = ""
    received_at_us: int = 0


def to_request_entry(record: RequestRecord, policy: LoggingPolicy) -> RequestEntry:
    """Encode a record's tensors under ``policy``; raises ``InvalidArgument`` (a
    ``ValueError``) for tensors the codec refuses. Encoded tensors over the policy's
    ``max_payload_bytes`` are dropped (``RequestLog.log`` already let go of payloads whose
    raw size is over it, so they are never encoded just to be discarded)."""
    inputs = outputs = None
    dropped = record.payload_dropped
    if policy.capture_payload and not dropped:
        inputs = encode_tensors(record.inputs)
        outputs = encode_tensors(record.outputs)
        if len(inputs) + len(outputs) > policy.max_payload_bytes:
            inputs = outputs = None
            dropped = True
    metadata = record.metadata
    # Positional, widths inlined: this runs for every logged inference (see _WIDTH).
    return RequestEntry(
        record.record_id[:32], record.request_id[:256], record.model[:128],
        int(record.version), int(record.timestamp_us), int(record.latency_us),
        record.status[:32], inputs, outputs,
        {str(k): str(v) for k, v in metadata.items()} if metadata else {},
        dropped, record.arm[:64], record.experiment_id[:128], record.routing_key_hash[:64],
        record.shadow,
    )


def to_feedback_entry(record: FeedbackRecord) -> FeedbackEntry:
    received = int(record.received_at_us)
    return FeedbackEntry(
        feedback_id=record.feedback_id[:_WIDTH["id"]],
        request_id=record.request_id[:_WIDTH["request_id"]], model=record.model[:_WIDTH["model"]],
        label=record.label,
        timestamp_us=received if record.timestamp_us is None else int(record.timestamp_us),
        received_at_us=received,
    )


_REQUEST = 1
_FEEDBACK = 2
_REQ_HEAD = struct.Struct("<BqqqB10I")
_FB_HEAD = struct.Struct("<BqqB4I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_LABEL_CODES = {"int": 0, "float": 1, "tensor": 2}
_LABEL_KINDS = ("int", "float", "tensor")


def encode_entry(entry: RequestEntry | FeedbackEntry) -> bytes:
    """The journal payload of one entry (see the module docstring)."""
    if isinstance(entry, RequestEntry):
        fields = (
            entry.record_id.encode(), entry.request_id.encode(), entry.model.encode(),
            entry.status.encode(), entry.arm.encode(), entry.experiment_id.encode(),
            entry.routing_key_hash.encode(),
            json.dumps(entry.metadata).encode() if entry.metadata else b"",
            entry.inputs or b"", entry.outputs or b"",
        )
        flags = ((1 if entry.payload_dropped else 0) | (2 if entry.shadow else 0)
                 | (4 if entry.inputs is not None else 0)
                 | (8 if entry.outputs is not None else 0))
        head = _REQ_HEAD.pack(
            _REQUEST, entry.version, entry.timestamp_us, entry.latency_us, flags,
            *map(len, fields),
        )
        return b"".join((head, *fields))
    label = entry.label
    if label.kind == "int":
        value = _I64.pack(label.value)
    elif label.kind == "float":
        value = _F64.pack(label.value)
    else:
        assert isinstance(label.value, Tensor)
        value = encode_tensors([label.value])
    parts = (entry.feedback_id.encode(), entry.request_id.encode(), entry.model.encode(), value)
    head = _FB_HEAD.pack(
        _FEEDBACK, entry.timestamp_us, entry.received_at_us, _LABEL_CODES[label.kind],
        *map(len, parts),
    )
    return b"".join((head, *parts))


def decode_entry(payload: bytes) -> RequestEntry | FeedbackEntry:
    """The entry of one journal payload; raises ``ValueError`` if it is malformed."""
    try:
        kind = payload[0]
        if kind == _REQUEST:
            _, version, ts, latency, flags, *lengths = _REQ_HEAD.unpack_from(payload)
            parts = _split(payload, _REQ_HEAD.size, lengths)
            rid, qid, model, status, arm, exp, key, meta, inputs, outputs = parts
            return RequestEntry(
                record_id=rid.decode(), request_id=qid.decode(), model=model.decode(),
                version=version, timestamp_us=ts, latency_us=latency, status=status.decode(),
                inputs=inputs if flags & 4 else None, outputs=outputs if flags & 8 else None,
                metadata=json.loads(meta) if meta else {}, payload_dropped=bool(flags & 1),
                arm=arm.decode(), experiment_id=exp.decode(), routing_key_hash=key.decode(),
                shadow=bool(flags & 2),
            )
        if kind == _FEEDBACK:
            _, ts, received, code, *lengths = _FB_HEAD.unpack_from(payload)
            fid, qid, model, value = _split(payload, _FB_HEAD.size, lengths)
            label_kind = _LABEL_KINDS[code]
            if label_kind == "int":
                label = Label("int", _I64.unpack(value)[0])
            elif label_kind == "float":
                label = Label("float", _F64.unpack(value)[0])
            else:
                (tensor,) = decode_tensors(value)
                label = Label("tensor", tensor)
            return FeedbackEntry(
                feedback_id=fid.decode(), request_id=qid.decode(), model=model.decode(),
                label=label, timestamp_us=ts, received_at_us=received,
            )
    except (struct.error, IndexError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"malformed journal record: {err}") from err
    raise ValueError(f"malformed journal record: unknown kind {kind}")


def _split(payload: bytes, offset: int, lengths: Sequence[int]) -> list[bytes]:
    parts = []
    for length in lengths:
        end = offset + length
        if end > len(payload):
            raise ValueError("malformed journal record: a field overruns the payload")
        parts.append(payload[offset:end])
        offset = end
    if offset != len(payload):
        raise ValueError("malformed journal record: trailing bytes")
    return parts
