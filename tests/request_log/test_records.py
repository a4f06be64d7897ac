"""The tensor codec and the journal's record encoding: byte-exact round trips."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.request_log import Label, LoggingPolicy, RequestRecord, Tensor, new_record_id
from gateway.request_log.record import (
    FeedbackRecord,
    decode_entry,
    encode_entry,
    to_feedback_entry,
    to_request_entry,
)
from gateway.types import InferInput
from lifecycle.errors import InvalidArgument
from lifecycle.request_records import decode_tensors, encode_tensors


def arrays_of_every_datatype() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    arrays: dict[str, np.ndarray] = {
        "BOOL": np.array([[True, False, True]]),
        "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
        "UINT16": np.array([[0, 65535]], dtype=np.uint16),
        "UINT32": np.array([[2**32 - 1]], dtype=np.uint32),
        "UINT64": np.array([[2**64 - 1, 3]], dtype=np.uint64),
        "INT8": np.array([[-128, 127]], dtype=np.int8),
        "INT16": np.array([[-32768]], dtype=np.int16),
        "INT32": np.array([[-(2**31), 5]], dtype=np.int32),
        "INT64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
        # NaN with a payload and a negative zero: only a byte copy keeps them.
        "FP16": np.array([[0x7E01, 0x8000, 0x3C00]], dtype=np.uint16).view(np.float16),
        "FP32": rng.random((2, 3), dtype=np.float32),
        "FP64": np.array([[np.pi, -0.0, np.inf]]),
        "BYTES": np.array([[b"", b"\x00\xffraw", "caf\u00e9".encode()]], dtype=object),
    }
    return arrays


def expected_bytes(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(len(x).to_bytes(4, "little") + x for x in array.reshape(-1))
    return array.tobytes()


def test_every_datatype_round_trips_byte_exact() -> None:
    arrays = arrays_of_every_datatype()
    sources = [InferInput(f"t_{dt}", dt, array) for dt, array in arrays.items()]
    decoded = decode_tensors(encode_tensors(sources))
    assert [t.name for t in decoded] == [f"t_{dt}" for dt in arrays]
    for tensor, (datatype, array) in zip(decoded, arrays.items(), strict=True):
        assert tensor.datatype == datatype
        assert tensor.shape == array.shape
        assert tensor.data == expected_bytes(datatype, array)
        back = tensor.to_numpy()
        assert back.shape == array.shape
        if datatype == "BYTES":
            assert back.tolist() == array.tolist()
        else:
            assert back.tobytes() == array.tobytes()


def test_a_tensor_already_encoded_is_stored_as_is_and_other_dtypes_are_converted() -> None:
    tensor = Tensor("x", "INT32", (2,), b"\x01\x00\x00\x00\x02\x00\x00\x00")
    strings = InferInput("s", "BYTES", np.array(["a", "bc"], dtype=object))
    wide = InferInput("w", "FP32", np.array([1.5, 2.5], dtype=np.float64))
    x, s, w = decode_tensors(encode_tensors([tensor, strings, wide]))
    assert x == tensor
    assert s.to_numpy().tolist() == [b"a", b"bc"]
    assert w.to_numpy().dtype == np.float32 and w.to_numpy().tolist() == [1.5, 2.5]
    assert decode_tensors(encode_tensors([])) == ()


def test_corrupt_blobs_and_unknown_datatypes_are_invalid() -> None:
    blob = encode_tensors([Tensor("x", "FP32", (1,), b"\x00\x00\x80\x3f")])
    with pytest.raises(InvalidArgument, match="truncated|corrupt"):
        decode_tensors(blob[:-1])
    with pytest.raises(InvalidArgument, match="trailing"):
        decode_tensors(blob + b"\x00")
    with pytest.raises(InvalidArgument, match="datatype"):
        encode_tensors([InferInput("x", "FP8", np.zeros(1))])


def test_labels_are_typed() -> None:
    assert Label.of(3) == Label("int", 3)
    assert Label.of(np.int64(3)) == Label("int", 3)
    assert Label.of(0.5) == Label("float", 0.5)
    tensor = Tensor("y", "FP32", (1,), b"\x00\x00\x00\x00")
    assert Label.of(tensor) == Label("tensor", tensor)
    with pytest.raises(InvalidArgument, match="bool"):
        Label.of(True)
    with pytest.raises(InvalidArgument, match="64 bits"):
        Label.of(2**64)


def test_record_ids_are_32_hex_digits_ordered_by_millisecond() -> None:
    first, second = new_record_id(1_000_000_000_000), new_record_id(1_000_000_001_000)
    assert len(first) == 32 and int(first, 16) >= 0
    assert first < second
    assert len({new_record_id(5_000) for _ in range(1000)}) == 1000


def test_request_entries_round_trip_through_the_journal_encoding() -> None:
    arrays = arrays_of_every_datatype()
    record = RequestRecord(
        model="m", version=3, request_id="req-\u00e9", record_id=new_record_id(42_000),
        inputs=[InferInput(dt, dt, a) for dt, a in arrays.items()],
        outputs=[InferInput("out", "FP32", np.ones((1, 2), np.float32))],
        status="OK", latency_us=17, timestamp_us=42_000, metadata={"tenant": "a"},
        arm="b", experiment_id="exp", routing_key_hash="ff00", shadow=True,
    )
    entry = to_request_entry(record, LoggingPolicy())
    assert decode_entry(encode_entry(entry)) == entry
    assert entry.inputs is not None and len(decode_tensors(entry.inputs)) == len(arrays)
    bare = to_request_entry(record, LoggingPolicy(capture_payload=False))
    assert bare.inputs is None and bare.outputs is None and not bare.payload_dropped
    assert decode_entry(encode_entry(bare)) == bare


def test_payloads_over_the_limit_are_dropped_and_flagged() -> None:
    big = InferInput("x", "FP32", np.zeros((1, 1000), np.float32))
    record = RequestRecord(model="m", version=1, inputs=[big], outputs=[big])
    entry = to_request_entry(record, LoggingPolicy(max_payload_bytes=7999))
    assert entry.payload_dropped and entry.inputs is None and entry.outputs is None
    # Under the raw size but over once encoded (headers count too).
    entry = to_request_entry(record, LoggingPolicy(max_payload_bytes=8000))
    assert entry.payload_dropped
    entry = to_request_entry(record, LoggingPolicy(max_payload_bytes=9000))
    assert not entry.payload_dropped and entry.inputs is not None


def test_overlong_fields_are_cut_to_their_column_width() -> None:
    record = RequestRecord(model="m", version=1, request_id="r" * 1000, status="S" * 100)
    entry = to_request_entry(record, LoggingPolicy())
    assert len(entry.request_id) == 256 and len(entry.status) == 32


@pytest.mark.parametrize("label", [Label.of(7), Label.of(-0.125),
                                   Label.of(Tensor("y", "INT64", (2,), bytes(16)))])
def test_feedback_entries_round_trip(label: Label) -> None:
    entry = to_feedback_entry(FeedbackRecord(model="m", request_id="r", label=label,
                                             feedback_id="f" * 32, received_at_us=9))
    assert entry.timestamp_us == 9
    assert decode_entry(encode_entry(entry)) == entry


def test_malformed_journal_records_are_value_errors() -> None:
    payload = encode_entry(to_request_entry(RequestRecord(model="m", version=1),
                                            LoggingPolicy()))
    for bad in (payload[:-1], payload + b"x", b"\x09" + payload[1:], b""):
        with pytest.raises(ValueError, match="malformed"):
            decode_entry(bad)


def test_policies_validate_and_sample_with_the_given_generator() -> None:
    import random

    with pytest.raises(ValueError, match="sample_rate"):
        LoggingPolicy(sample_rate=1.5)
    with pytest.raises(ValueError, match="max_payload_bytes"):
        LoggingPolicy(max_payload_bytes=-1)
    rng = random.Random(1)
    assert all(LoggingPolicy().should_log(rng) for _ in range(100))
    assert not any(LoggingPolicy(sample_rate=0.0).should_log(rng) for _ in range(100))
    hits = sum(LoggingPolicy(sample_rate=0.25).should_log(rng) for _ in range(4000))
    assert 800 < hits < 1200
