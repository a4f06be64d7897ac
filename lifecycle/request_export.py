"""Turn a model's logged, labelled traffic into a training set, and write it as npz or csv.

The rows are those a training run would see: every primary record that carries a label
(``RequestStore`` join rules), in time order. One record contributes one row per item of
its batch (the first dimension of its input tensor; a 0-d tensor is one row):

- ``features``: the rows of the model's input tensor (its only one, or ``input_name``);
- ``predictions``: the rows of its output tensor (``output_name``, default the first);
- ``labels``: an int class or float value labels a one-row record; a tensor label gives
  one row per batch item (its first dimension equals the batch) or, for a one-row record,
  the whole tensor;
- ``record_ids``, ``request_ids``, ``versions``, ``timestamps_us``: per row.

Labelled records that cannot form rows — no captured payload, no such tensor, a label
that does not fit the batch, or rows whose shape or datatype differs from the first
record's — are skipped and counted in ``TrainingSet.skipped``.

``write_npz`` never pickles: BYTES tensors become fixed-width byte strings.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from lifecycle.errors import InvalidArgument
from lifecycle.request_records import Label, LoggedRequest, Tensor
from lifecycle.request_store import RequestStore

__all__ = ["TrainingSet", "build_training_set", "training_set_from", "write_csv", "write_npz"]


@dataclass(frozen=True)
class TrainingSet:
    model: str
    input_name: str
    output_name: str
    features: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    record_ids: np.ndarray
    request_ids: np.ndarray
    versions: np.ndarray
    timestamps_us: np.ndarray
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])


def build_training_set(
    store: RequestStore,
    model: str,
    *,
    version: int | None = None,
    since: int | None = None,
    until: int | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
    limit: int | None = None,
) -> TrainingSet:
    """The labelled traffic of ``model`` (filters as in ``RequestStore.query_requests``)."""
    records = store.query_requests(
        model, version=version, since=since, until=until, has_feedback=True,
        include_shadow=False, limit=limit,
    )
    return training_set_from(model, records, input_name=input_name, output_name=output_name)


def training_set_from(
    model: str,
    records: Iterable[LoggedRequest],
    *,
    input_name: str | None = None,
    output_name: str | None = None,
) -> TrainingSet:
    """Build the set from already-fetched records (those without a label are skipped)."""
    builder = _Builder(input_name, output_name)
    for record in records:
        builder.add(record)
    return builder.finish(model)


def _rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(1) if array.ndim == 0 else array


def _label_rows(label: Label, batch: int) -> np.ndarray | None:
    if isinstance(label.value, Tensor):
        array = label.value.to_numpy()
        if array.ndim >= 1 and array.shape[0] == batch:
            return array
        return array.reshape((1, *array.shape)) if batch == 1 else None
    if batch != 1:
        return None
    return np.array([label.value], dtype=np.int64 if label.kind == "int" else np.float64)


class _Builder:
    def __init__(self, input_name: str | None, output_name: str | None) -> None:
        self.input_name = input_name
        self.output_name = output_name
        self.parts: dict[str, list[np.ndarray]] = {
            "features": [], "predictions": [], "labels": []}
        self.ids: list[tuple[str, str, int, int, int]] = []
        self.shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.skipped: dict[str, int] = {}

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _pick(self, tensors: tuple[Tensor, ...], name: str | None, kind: str) -> Tensor | None:
        if name is not None:
            return next((t for t in tensors if t.name == name), None)
        if kind == "input" and len(tensors) > 1:
            raise InvalidArgument(
                f"records have {len(tensors)} inputs {[t.name for t in tensors]}: pass "
                "input_name to choose the features"
            )
        return tensors[0] if tensors else None

    def _fits(self, key: str, rows: np.ndarray) -> bool:
        signature = (rows.dtype.str, tuple(rows.shape[1:]))
        return self.shapes.setdefault(key, signature) == signature

    def add(self, record: LoggedRequest) -> None:
        if record.feedback is None:
            return
        if not record.payload_captured:
            self._skip("no_payload")
            return
        source = self._pick(record.inputs, self.input_name, "input")
        target = self._pick(record.outputs, self.output_name, "output")
        if source is None or target is None:
            self._skip("missing_tensor")
            return
        self.input_name, self.output_name = source.name, target.name
        features, predictions = _rows(source.to_numpy()), _rows(target.to_numpy())
        batch = features.shape[0]
        labels = _label_rows(record.feedback.label, batch)
        if labels is None or predictions.shape[0] != batch:
            self._skip("batch_mismatch")
            return
        if not (self._fits("features", features) and self._fits("predictions", predictions)
                and self._fits_label(labels)):
            self._skip("shape_mismatch")
            return
        self.parts["features"].append(features)
        self.parts["predictions"].append(predictions)
        self.parts["labels"].append(labels)
        row = (record.record_id, record.request_id, record.version, record.timestamp_us, batch)
        self.ids.append(row)

    def _fits_label(self, labels: np.ndarray) -> bool:
        # Int classes and float values may mix (the set becomes float64); shapes may not.
        kind = "number" if labels.ndim == 1 and labels.dtype.kind in "if" else labels.dtype.str
        signature = (kind, tuple(labels.shape[1:]))
        return self.shapes.setdefault("labels", signature) == signature

    def finish(self, model: str) -> TrainingSet:
        def stack(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty((0,))

        def per_row(index: int, dtype: Any) -> np.ndarray:
            values = [row[index] for row in self.ids for _ in range(row[4])]
            return np.array(values, dtype=dtype)

        labels = self.parts["labels"]
        if labels and any(p.dtype.kind == "f" for p in labels):
            labels = [p.astype(np.float64) if p.dtype.kind == "i" else p for p in labels]
        return TrainingSet(
            model=model, input_name=self.input_name or "", output_name=self.output_name or "",
            features=stack(self.parts["features"]), predictions=stack(self.parts["predictions"]),
            labels=stack(labels), record_ids=per_row(0, np.str_), request_ids=per_row(1, np.str_),
            versions=per_row(2, np.int64), timestamps_us=per_row(3, np.int64),
            skipped=sum(self.skipped.values()), skipped_reasons=dict(self.skipped),
        )


def _no_objects(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:
        return array.astype(np.bytes_) if array.size else np.empty(array.shape, np.bytes_)
    return array


def write_npz(training_set: TrainingSet, file: str | Path | IO[bytes]) -> None:
    """Arrays ``features``, ``predictions``, ``labels``, ``record_ids``, ``request_ids``,
    ``versions``, ``timestamps_us`` (and 0-d ``model``, ``input_name``, ``output_name``);
    load with ``np.load(file)`` — no pickle needed."""
    t = training_set
    np.savez(
        file, features=_no_objects(t.features), predictions=_no_objects(t.predictions),
        labels=_no_objects(t.labels), record_ids=t.record_ids, request_ids=t.request_ids,
        versions=t.versions, timestamps_us=t.timestamps_us, model=np.str_(t.model),
        input_name=np.str_(t.input_name), output_name=np.str_(t.output_name),
    )


def _cell(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def _flat(array: np.ndarray) -> list[list[Any]]:
    return array.reshape(array.shape[0], -1).tolist() if array.shape[0] else []


def write_csv(training_set: TrainingSet, file: IO[str]) -> None:
    """One line per row: ``record_id, request_id, version, timestamp_us``, the flattened
    features ``f0…``, predictions ``p0…`` and labels (``label`` or ``label0…``). Floats
    are written with Python's shortest round-tripping repr (parsing them back as the
    tensor's datatype gives the logged values exactly)."""
    t = training_set
    features, predictions, labels = _flat(t.features), _flat(t.predictions), _flat(t.labels)
    width = {name: len(rows[0]) if rows else 0
             for name, rows in (("f", features), ("p", predictions), ("label", labels))}
    label_header = (["label"] if width["label"] == 1 and t.labels.ndim == 1
                    else [f"label{i}" for i in range(width["label"])])
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(["record_id", "request_id", "version", "timestamp_us",
                     *(f"f{i}" for i in range(width["f"])),
                     *(f"p{i}" for i in range(width["p"])), *label_header])
    for i in range(len(t)):
        writer.writerow([
            t.record_ids[i], t.request_ids[i], int(t.versions[i]), int(t.timestamps_us[i]),
            *map(_cell, features[i]), *map(_cell, predictions[i]), *map(_cell, labels[i]),
        ])
