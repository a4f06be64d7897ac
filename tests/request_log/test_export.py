"""Exporting labelled traffic as a training set: rows, labels, npz and csv."""

from __future__ import annotations

import csv
import io
import itertools

import numpy as np
import pytest

from lifecycle.errors import InvalidArgument
from lifecycle.request_export import build_training_set, write_csv, write_npz
from lifecycle.request_records import FeedbackEntry, Label, RequestEntry, Tensor, encode_tensors
from lifecycle.request_store import RequestStore

_ids = itertools.count(1)


def logged(store: RequestStore, request_id: str, ts: int, inputs: list[Tensor],
           outputs: list[Tensor], label: int | float | Tensor | None, *,
           version: int = 1) -> str:
    record_id = f"{next(_ids):032x}"
    store.insert([RequestEntry(
        record_id=record_id, request_id=request_id, model="m", version=version,
        timestamp_us=ts, latency_us=1, status="OK", inputs=encode_tensors(inputs),
        outputs=encode_tensors(outputs),
    )])
    if label is not None:
        store.insert(feedback=[FeedbackEntry(
            feedback_id=f"{next(_ids):032x}", request_id=request_id, model="m",
            label=Label.of(label), timestamp_us=ts, received_at_us=ts + 1)])
    return record_id


def fp32(name: str, rows: list[list[float]]) -> Tensor:
    return Tensor.from_array(name, "FP32", np.array(rows, dtype=np.float32))


def test_rows_stack_batches_and_mixed_number_labels(store: RequestStore) -> None:
    a = logged(store, "a", 10, [fp32("x", [[0.1, 0.2]])], [fp32("p", [[0.9]])], 1)
    b = logged(store, "b", 20, [fp32("x", [[1.5, 2.5]])], [fp32("p", [[0.3]])], 0.25,
               version=2)
    label_rows = Tensor.from_array("y", "INT64", np.array([3, 4]))
    c = logged(store, "c", 30, [fp32("x", [[5, 6], [7, 8]])], [fp32("p", [[1], [2]])],
               label_rows)
    logged(store, "unlabelled", 40, [fp32("x", [[0, 0]])], [fp32("p", [[0]])], None)
    logged(store, "batch2-scalar", 50, [fp32("x", [[0, 0], [1, 1]])], [fp32("p", [[0], [1]])],
           1)
    logged(store, "wide", 60, [fp32("x", [[0, 0, 0]])], [fp32("p", [[0]])], 1)

    ts = build_training_set(store, "m")
    assert ts.record_ids.tolist() == [a, b, c, c]
    assert ts.request_ids.tolist() == ["a", "b", "c", "c"]
    assert ts.features.dtype == np.float32 and ts.features.shape == (4, 2)
    assert ts.features.tobytes() == np.array(
        [[0.1, 0.2], [1.5, 2.5], [5, 6], [7, 8]], dtype=np.float32).tobytes()
    assert ts.predictions.ravel().tolist() == pytest.approx([0.9, 0.3, 1, 2])
    assert ts.labels.dtype == np.float64 and ts.labels.tolist() == [1.0, 0.25, 3.0, 4.0]
    assert ts.versions.tolist() == [1, 2, 1, 1] and ts.timestamps_us.tolist() == [10, 20, 30, 30]
    assert ts.skipped_reasons == {"batch_mismatch": 1, "shape_mismatch": 1}
    assert len(build_training_set(store, "m", version=2)) == 1
    assert build_training_set(store, "m", since=25).record_ids.tolist() == [c, c]


def test_npz_and_csv_hold_the_exact_values(store: RequestStore) -> None:
    values = np.array([[np.float32(1) / 3, -0.0, 1e-30]], dtype=np.float32)
    first = logged(store, "a", 1, [fp32("x", values.tolist())], [fp32("p", [[0.5]])], 2)
    second = logged(store, "b", 2, [fp32("x", [[4, 5, 6]])], [fp32("p", [[0.25]])], 0)
    ts = build_training_set(store, "m")

    buffer = io.BytesIO()
    write_npz(ts, buffer)
    buffer.seek(0)
    loaded = np.load(buffer)  # no allow_pickle: nothing was pickled
    assert loaded["features"].tobytes() == ts.features.tobytes()
    assert loaded["labels"].tolist() == [2, 0] and loaded["labels"].dtype == np.int64
    assert loaded["record_ids"].tolist() == [first, second]
    assert str(loaded["model"]) == "m" and str(loaded["input_name"]) == "x"

    text = io.StringIO()
    write_csv(ts, text)
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert [r["record_id"] for r in rows] == [first, second]
    assert list(rows[0]) == ["record_id", "request_id", "version", "timestamp_us", "f0", "f1",
                             "f2", "p0", "label"]
    parsed = np.array([[float(rows[0][f"f{i}"]) for i in range(3)]], dtype=np.float32)
    assert parsed.tobytes() == values.tobytes()
    assert rows[1]["label"] == "0" and rows[0]["version"] == "1"


def test_bytes_features_export_without_pickle(store: RequestStore) -> None:
    text = Tensor.from_array("text", "BYTES", np.array([[b"hello", b"w\xc3\xb6rld"]],
                                                       dtype=object))
    logged(store, "a", 1, [text], [fp32("p", [[1]])], 1)
    ts = build_training_set(store, "m")
    buffer = io.BytesIO()
    write_npz(ts, buffer)
    buffer.seek(0)
    assert np.load(buffer)["features"].tolist() == [[b"hello", b"w\xc3\xb6rld"]]
    out = io.StringIO()
    write_csv(ts, out)
    assert "hello,w\u00f6rld" in out.getvalue()


def test_several_inputs_need_a_name(store: RequestStore) -> None:
    logged(store, "a", 1, [fp32("x", [[1]]), fp32("z", [[2]])], [fp32("p", [[1]])], 1)
    with pytest.raises(InvalidArgument, match="input_name"):
        build_training_set(store, "m")
    chosen = build_training_set(store, "m", input_name="z")
    assert chosen.features.tolist() == [[2.0]] and chosen.input_name == "z"
    assert len(build_training_set(store, "m", input_name="nope")) == 0


def test_an_empty_export_writes_a_header_only(store: RequestStore) -> None:
    ts = build_training_set(store, "m")
    assert len(ts) == 0
    out = io.StringIO()
    write_csv(ts, out)
    assert out.getvalue().startswith("record_id,request_id,version,timestamp_us")
    write_npz(ts, io.BytesIO())
