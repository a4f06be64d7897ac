"""Pure pieces of the wiring, without a server: wire tensors and labels both ways, the
CLI's label and time parsing, record ids."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from gateway.cli.client import CliError
from gateway.cli.feedback import parse_label, read_labels
from gateway.cli.times import format_us, parse_time
from gateway.errors import InvalidInput
from gateway.pb import admin_pb2 as apb
from gateway.pb import feedback_pb2 as fpb
from gateway.request_log import RecordIds
from gateway.rpc.request_log_converters import (
    feedback_fields,
    from_logged_request,
    logged_request,
    tensor_of,
)
from lifecycle.request_records import JoinedFeedback, Label, LoggedRequest, Tensor


def bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


@pytest.mark.parametrize(("message", "error"), [
    (fpb.Tensor(datatype="FP32", shape=[2], raw_contents=b"\0" * 8), None),
    (fpb.Tensor(datatype="FP16", shape=[3], raw_contents=b"\0" * 6), None),
    (fpb.Tensor(datatype="BYTES", shape=[2], raw_contents=bytes_tensor(b"a", b"")), None),
    (fpb.Tensor(datatype="INT64", shape=[0], raw_contents=b""), None),
    (fpb.Tensor(datatype="FP32", shape=[2], raw_contents=b"\0" * 7),
     "have 7 bytes, expected 8"),
    (fpb.Tensor(datatype="fp32", shape=[1], raw_contents=b"\0" * 4), "unknown datatype 'fp32'"),
    (fpb.Tensor(datatype="INT8", shape=[-1], raw_contents=b""), "non-negative dimensions"),
    (fpb.Tensor(datatype="BYTES", shape=[2], raw_contents=bytes_tensor(b"a")),
     "end after 1 of 2 elements"),
    (fpb.Tensor(datatype="BYTES", shape=[1], raw_contents=bytes_tensor(b"a") + b"x"),
     "bytes past 1 elements"),
    (fpb.Tensor(datatype="BYTES", shape=[1], raw_contents=struct.pack("<I", 9) + b"ab"),
     "overruns"),
])
def test_wire_tensors_are_checked(message: fpb.Tensor, error: str | None) -> None:
    if error is None:
        tensor = tensor_of(message, "label.tensor")
        assert (tensor.datatype, tensor.shape, tensor.data) == (
            message.datatype, tuple(message.shape), message.raw_contents)
        return
    with pytest.raises(InvalidInput, match="label.tensor: ") as info:
        tensor_of(message, "label.tensor")
    assert error in str(info.value)


def test_feedback_fields() -> None:
    message = fpb.Feedback(model="m", request_id="r", value=0.5)
    message.event_time.FromMicroseconds(1_700_000_000_123_456)
    assert feedback_fields(message) == ("m", "r", Label("float", 0.5), 1_700_000_000_123_456)
    assert feedback_fields(fpb.Feedback(model="m", request_id="r", class_label=-3))[2:] == (
        Label("int", -3), None)


def test_logged_requests_round_trip_through_the_admin_message() -> None:
    x = Tensor.from_array("features", "FP32", np.array([[np.nan, -0.0, 1.5]], np.float32))
    y = Tensor.from_array("label", "BYTES", np.array([b"yes", b""], dtype=object))
    label = Tensor.from_array("y", "INT64", np.array([1, 0]))
    record = LoggedRequest(
        record_id="0" * 32, request_id="r", model="m", version=3,
        timestamp_us=1_700_000_000_000_001, latency_us=42, status="OK", inputs=(x,),
        outputs=(y,), metadata={"x-client-id": "c"}, payload_dropped=False,
        payload_captured=True, arm="b", experiment_id="e", routing_key_hash="h", shadow=False,
        feedback=JoinedFeedback("f" * 32, Label("tensor", label), 5, 6, 2),
    )
    message = logged_request(record)
    back = from_logged_request(apb.LoggedRequest.FromString(message.SerializeToString()))
    assert back == record
    slim = logged_request(record, payload=False)
    assert not slim.inputs and not slim.outputs and not slim.payload_captured


def test_cli_labels() -> None:
    assert parse_label("3") == {"class_label": 3}
    assert parse_label(" -1 ") == {"class_label": -1}
    assert parse_label("1.0") == {"value": 1.0}
    assert parse_label("nan")["value"] != parse_label("nan")["value"]
    ints = parse_label("[[1, 2], [3, 4]]")["tensor"]
    assert (ints.datatype, list(ints.shape)) == ("INT64", [2, 2])
    assert np.frombuffer(ints.raw_contents, "<i8").tolist() == [1, 2, 3, 4]
    floats = parse_label("[0.5, 1]", "FP16")["tensor"]
    assert floats.datatype == "FP16" and len(floats.raw_contents) == 4
    assert parse_label("[1, 2.5]")["tensor"].datatype == "FP64"
    for text, reason in (("yes", "expected an integer class"), ("inf", "finite"),
                         ("[1,", "JSON array"), ('["a"]', "holds numbers")):
        with pytest.raises(ValueError, match=reason):
            parse_label(text)
    with pytest.raises(ValueError, match="--datatype applies to tensor labels"):
        parse_label("1", "FP32")


def test_cli_label_files(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("time,label,request_id\n# a comment\n\n0,1,a\n,0.5,b\n"
                    '2026-05-10T00:00:00Z,"[1, 2]",c\n')
    messages, lines = read_labels(path, "m", None)
    assert [m.request_id for m in messages] == ["a", "b", "c"] and lines == [4, 5, 6]
    assert messages[0].event_time.ToMicroseconds() == 0
    assert not messages[1].HasField("event_time") and messages[1].value == 0.5
    assert messages[2].tensor.datatype == "INT64"
    path.write_text("a,1,2,3\n")
    with pytest.raises(CliError, match=r"labels.csv:1: expected request_id,label,time"):
        read_labels(path, "m", None)
    path.write_text("request_id,klass\n")
    with pytest.raises(CliError, match="a header names"):
        read_labels(path, "m", None)


def test_cli_times() -> None:
    now = 1_700_000_000_000_000
    assert parse_time("now", now) == now
    assert parse_time("90m", now) == now - 90 * 60 * 1_000_000
    assert parse_time("1.5d", now) == now - 129_600 * 1_000_000
    assert parse_time("1700000000.5", now) == 1_700_000_000_500_000
    assert parse_time("1970-01-02", now) == 86_400_000_000
    assert parse_time("1970-01-01T01:00:00+01:00", now) == 0
    assert parse_time("2023-11-14T22:13:20.000001Z", now) == now + 1
    assert format_us(now + 1234) == "2023-11-14T22:13:20.001Z"
    with pytest.raises(ValueError, match="expected a time"):
        parse_time("yesterday", now)


def test_record_ids_are_unique_time_ordered_and_32_hex_digits() -> None:
    ids, other = RecordIds(), RecordIds()
    made = [ids.next(1_000_000 + i) for i in range(5000)]
    assert len(set(made)) == 5000 and all(len(i) == 32 for i in made)
    int(made[0], 16)
    assert ids.next(2_000_000) > ids.next(1_999_000)
    assert not set(made) & {other.next(1_000_000 + i) for i in range(5000)}
