"""Domain types of the request log, and the compact binary tensor codec they store.

Shared by the gateway's request-log engine (which writes them) and the lifecycle's store
and export (which read them); no SQLAlchemy and no ``gateway`` import here, so both sides
can depend on it. Timestamps are integer microseconds since the Unix epoch (UTC).

Tensor blob (little-endian; one blob holds every input, another every output):

    blob   := u8 format (=1) · u16 count · tensor*count
    tensor := u16 name_len · name (utf-8) · u8 datatype code · u8 rank · u64 dim*rank
              · u64 data_len · data

``data`` is the tensor's raw little-endian bytes in row-major order; for ``BYTES`` it is
the V2 length-prefixed form (u32 length · bytes, per element). Decoding returns the very
bytes that were encoded, so a round trip is byte-exact for every datatype (FP16 and NaN
payloads included): values are never formatted as text.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Protocol

import numpy as np

from lifecycle.errors import InvalidArgument

__all__ = [
    "DATATYPES",
    "FeedbackEntry",
    "JoinedFeedback",
    "Label",
    "LoggedRequest",
    "RequestEntry",
    "Tensor",
    "TensorSource",
    "decode_tensors",
    "encode_bytes_elements",
    "encode_tensors",
]

# Order is the on-disk datatype code: append only.
DATATYPES: tuple[str, ...] = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
)
_CODE = {name: code for code, name in enumerate(DATATYPES)}
_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_FORMAT = 1
_BLOB_HEAD = struct.Struct("<BH")
_NAME_LEN = struct.Struct("<H")
_TYPE_RANK = struct.Struct("<BB")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_DIMS = [struct.Struct(f"<{n}Q") for n in range(33)]
# The dims and the data length of a tensor of each rank, packed in one call.
_DIMS_LEN = [struct.Struct(f"<{n + 1}Q") for n in range(33)]
MAX_RANK = 32


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor in its stored form: V2 datatype name, shape and raw bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def from_array(cls, name: str, datatype: str, array: np.ndarray) -> Tensor:
        """Encode ``array`` as ``datatype`` (converted if its dtype differs)."""
        shape, data = _array_bytes(name, datatype, array)
        return cls(name, datatype, shape, data)

    def to_numpy(self) -> np.ndarray:
        """The tensor as an array: BYTES become an object array of ``bytes``."""
        if self.datatype == "BYTES":
            count = 1
            for dim in self.shape:
                count *= dim
            return _split_bytes(self.name, self.data, count).reshape(self.shape)
        return np.frombuffer(self.data, dtype=_NUMPY[self.datatype]).reshape(self.shape)


class TensorSource(Protocol):
    """What ``encode_tensors`` accepts besides ``Tensor``: the serving path's
    ``InferInput``/``InferOutput`` (a name, a V2 datatype and a numpy array)."""

    name: str
    datatype: str
    array: np.ndarray


def encode_bytes_elements(array: np.ndarray) -> bytes:
    """The V2 length-prefixed form of a BYTES array (``str`` elements as UTF-8)."""
    parts: list[bytes] = []
    pack = _U32.pack
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _array_bytes(name: str, datatype: str, array: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    if datatype == "BYTES":
        return tuple(array.shape), encode_bytes_elements(np.asarray(array, dtype=object))
    dtype = _NUMPY.get(datatype)
    if dtype is None:
        raise InvalidArgument(
            f"tensor '{name}': unknown datatype '{datatype}', expected one of {list(DATATYPES)}"
        )
    # Identity first: numpy's dtype comparison costs more than the rest of the encoding.
    if array.dtype is not dtype and array.dtype != dtype:
        array = np.asarray(array, dtype=dtype)
    return array.shape, array.tobytes()


@lru_cache(maxsize=4096)
def _tensor_head(name: str, datatype: str, rank: int) -> bytes:
    """``u16 name_len · name · u8 datatype code · u8 rank``: the same for every record of a
    model's tensor, so built once."""
    raw = name.encode("utf-8")
    return _NAME_LEN.pack(len(raw)) + raw + _TYPE_RANK.pack(_CODE[datatype], rank)


def encode_tensors(tensors: Iterable[Tensor | TensorSource]) -> bytes:
    """One blob holding ``tensors`` in order; raises ``InvalidArgument`` on an unknown
    datatype, a rank above 32 or more than 65535 tensors."""
    parts: list[bytes] = [b""]
    count = 0
    for item in tensors:
        if isinstance(item, Tensor):
            shape, data = item.shape, item.data
            if item.datatype not in _CODE:
                raise InvalidArgument(f"tensor '{item.name}': unknown datatype '{item.datatype}'")
        else:
            shape, data = _array_bytes(item.name, item.datatype, item.array)
        rank = len(shape)
        if rank > MAX_RANK:
            raise InvalidArgument(f"tensor '{item.name}': rank {rank} is above {MAX_RANK}")
        parts.append(_tensor_head(item.name, item.datatype, rank))
        parts.append(_DIMS_LEN[rank].pack(*shape, len(data)))
        parts.append(data)
        count += 1
    if count > 0xFFFF:
        raise InvalidArgument(f"{count} tensors in one record, at most 65535")
    parts[0] = _BLOB_HEAD.pack(_FORMAT, count)
    return b"".join(parts)


def decode_tensors(blob: bytes) -> tuple[Tensor, ...]:
    """The tensors of a blob made by ``encode_tensors``; ``InvalidArgument`` if corrupt."""
    try:
        fmt, count = _BLOB_HEAD.unpack_from(blob, 0)
        if fmt != _FORMAT:
            raise InvalidArgument(f"tensor blob format {fmt}, expected {_FORMAT}")
        offset = _BLOB_HEAD.size
        out = []
        for _ in range(count):
            (name_len,) = _NAME_LEN.unpack_from(blob, offset)
            offset += 2
            name = bytes(blob[offset:offset + name_len]).decode("utf-8")
            offset += name_len
            code, rank = _TYPE_RANK.unpack_from(blob, offset)
            offset += 2
            shape = _DIMS[rank].unpack_from(blob, offset)
            offset += 8 * rank
            (size,) = _U64.unpack_from(blob, offset)
            offset += 8
            data = bytes(blob[offset:offset + size])
            if len(data) != size:
                raise InvalidArgument("tensor blob is truncated")
            offset += size
            out.append(Tensor(name, DATATYPES[code], shape, data))
    except (struct.error, IndexError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"corrupt tensor blob: {err}") from err
    if offset != len(blob):
        raise InvalidArgument(f"tensor blob has {len(blob) - offset} trailing bytes")
    return tuple(out)


def _split_bytes(name: str, data: bytes, count: int) -> np.ndarray:
    items = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        (length,) = _U32.unpack_from(data, offset)
        offset += 4
        items[i] = data[offset:offset + length]
        offset += length
    if offset != len(data):
        raise InvalidArgument(f"tensor '{name}': BYTES data does not hold {count} elements")
    return items


LabelKind = Literal["int", "float", "tensor"]


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth for one request: a class (int), a value (float) or a tensor."""

    kind: LabelKind
    value: int | float | Tensor

    @classmethod
    def of(cls, value: int | float | np.integer[Any] | np.floating[Any] | Tensor) -> Label:
        """``int`` → class, ``float`` → value, ``Tensor`` → tensor; ``bool`` is refused."""
        if isinstance(value, bool):
            raise InvalidArgument("a label is an int class, a float value or a tensor, not bool")
        if isinstance(value, int | np.integer):
            number = int(value)
            if not -(2**63) <= number < 2**63:
                raise InvalidArgument(f"int label {number} does not fit in 64 bits")
            return cls("int", number)
        if isinstance(value, float | np.floating):
            return cls("float", float(value))
        if isinstance(value, Tensor):
            return cls("tensor", value)
        raise InvalidArgument(
            f"a label is an int class, a float value or a tensor, got {type(value).__name__}"
        )


@dataclass(slots=True)
class RequestEntry:
    """One logged inference in its stored form (tensor blobs already encoded).

    Not frozen: the request log's writer builds one per logged inference, and a frozen
    dataclass's ``__init__`` costs three times as much. Treat it as immutable.

    ``inputs``/``outputs`` are ``encode_tensors`` blobs, or None when the payload was not
    captured (policy off, or over the size limit: then ``payload_dropped``). Routing fields
    are empty strings when the request was not routed by an experiment.
    """

    record_id: str
    request_id: str
    model: str
    version: int
    timestamp_us: int
    latency_us: int
    status: str
    inputs: bytes | None
    outputs: bytes | None
    metadata: dict[str, str] = field(default_factory=dict)
    payload_dropped: bool = False
    arm: str = ""
    experiment_id: str = ""
    routing_key_hash: str = ""
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    """One submission of ground truth. ``timestamp_us`` is the client's event time (the
    receive time when the client gave none); ``received_at_us`` is when the gateway got it."""

    feedback_id: str
    request_id: str
    model: str
    label: Label
    timestamp_us: int
    received_at_us: int


@dataclass(frozen=True, slots=True)
class JoinedFeedback:
    """The label a logged request carries: the latest received submission for its request
    id, and how many submissions there were (``count - 1`` duplicates)."""

    feedback_id: str
    label: Label
    timestamp_us: int
    received_at_us: int
    count: int


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """A logged inference as queries return it, tensors decoded, with its joined label."""

    record_id: str
    request_id: str
    model: str
    version: int
    timestamp_us: int
    latency_us: int
    status: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    metadata: dict[str, str]
    payload_dropped: bool
    payload_captured: bool
    arm: str
    experiment_id: str
    routing_key_hash: str
    shadow: bool
    feedback: JoinedFeedback | None
