"""Dataset snapshots: labelled traffic turned into a validated, versioned, stored dataset.

A snapshot is three arrays (``DatasetArrays``): ``features`` (2-D, the model's input
rows), ``labels`` (1-D) and ``timestamps_us`` (when each row was served; 0 for rows of a
seed dataset without times, which sorts them first). Its identity is ``content_sha256``,
a hash of the arrays' dtypes, shapes and bytes.

``DatasetStore`` keeps each one twice: the arrays as an ``.npz`` (written with
``np.savez``, read with ``allow_pickle=False``) in the content-addressed artifact store,
and a row in ``datasets`` with its version (1, 2, … per model), rows, time window, label
counts and per-feature drift profiles (``lifecycle.drift``). Saving the same content again
returns the existing dataset. ``dataset_links`` records which dataset a version was
trained on.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import CursorResult, RowMapping, func, insert, select, update

from lifecycle.artifacts import ArtifactStore
from lifecycle.db import Database, ModelRow, dataset_link_table, dataset_table
from lifecycle.drift import FeatureProfile, profile_features
from lifecycle.errors import ConflictError, InvalidArgument, ModelNotFound
from lifecycle.loop_errors import DatasetInvalid, DatasetNotFound
from lifecycle.request_export import build_training_set
from lifecycle.request_records import LoggedRequest, Tensor
from lifecycle.request_store import RequestStore

__all__ = [
    "Dataset",
    "DatasetArrays",
    "DatasetSpec",
    "DatasetStore",
    "recent_inputs",
    "snapshot_from_log",
    "split_by_time",
    "validate",
]

_D = dataset_table.c
_L = dataset_link_table.c
_SAVE_ATTEMPTS = 5


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, eq=False)
class DatasetArrays:
    """``features`` [n, f], ``labels`` [n], ``timestamps_us`` int64 [n]."""

    features: np.ndarray
    labels: np.ndarray
    timestamps_us: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def content_sha256(self) -> str:
        digest = hashlib.sha256()
        for name in ("features", "labels", "timestamps_us"):
            array = np.ascontiguousarray(getattr(self, name))
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def take(self, index: np.ndarray) -> DatasetArrays:
        return DatasetArrays(self.features[index], self.labels[index], self.timestamps_us[index])

    @staticmethod
    def concat(parts: Iterable[DatasetArrays]) -> DatasetArrays:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("nothing to concatenate")
        return DatasetArrays(np.concatenate([p.features for p in parts]),
                             np.concatenate([p.labels for p in parts]),
                             np.concatenate([p.timestamps_us for p in parts]))

    def to_npz(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, features=self.features, labels=self.labels,
                 timestamps_us=self.timestamps_us)
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> DatasetArrays:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return cls(npz["features"], npz["labels"], npz["timestamps_us"])


def split_by_time(arrays: DatasetArrays, holdout_fraction: float) -> tuple[DatasetArrays,
                                                                            DatasetArrays]:
    """(train, holdout): the newest ``holdout_fraction`` of rows (at least one) held out."""
    if not 0 < holdout_fraction < 1:
        raise InvalidArgument(f"holdout_fraction must be within (0, 1), got {holdout_fraction}")
    order = np.argsort(arrays.timestamps_us, kind="stable")
    n_holdout = max(1, math.ceil(len(arrays) * holdout_fraction))
    return arrays.take(order[:-n_holdout]), arrays.take(order[-n_holdout:])


@dataclass(frozen=True)
class DatasetSpec:
    """What a usable dataset looks like. ``allowed_labels`` None accepts any class;
    ``min_per_class`` applies to every allowed label (or every label seen)."""

    n_features: int
    task: str = "classification"
    feature_dtype: str = "float32"
    allowed_labels: tuple[int, ...] | None = None
    min_rows: int = 100
    min_per_class: int = 10


def validate(arrays: DatasetArrays, spec: DatasetSpec) -> dict[str, int]:
    """Check ``arrays`` against ``spec``; returns the label counts (as strings → counts).

    Raises ``DatasetInvalid`` naming the first problem: shape, dtype, non-finite values,
    a label outside the allowed ones, too few rows, too few of a class.
    """
    X, y = arrays.features, arrays.labels
    if len(arrays) == 0:
        raise DatasetInvalid("the dataset is empty: no labelled rows in the window")
    if X.ndim != 2 or X.shape[1] != spec.n_features:
        raise DatasetInvalid(f"features must have shape [n, {spec.n_features}], got "
                             f"{list(X.shape)}")
    if y.ndim != 1 or y.shape[0] != X.shape[0] or arrays.timestamps_us.shape != y.shape:
        raise DatasetInvalid(f"labels {list(y.shape)} and timestamps "
                             f"{list(arrays.timestamps_us.shape)} must be [{X.shape[0]}]")
    if X.dtype != np.dtype(spec.feature_dtype):
        raise DatasetInvalid(f"features must be {spec.feature_dtype}, got {X.dtype}")
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetInvalid(f"features hold {int(bad.sum())} NaN or infinite values "
                             f"(first at row {row}, feature {col})")
    counts: dict[str, int] = {}
    if spec.task == "classification":
        if y.dtype.kind not in "iu":
            raise DatasetInvalid(f"classification labels must be integers, got {y.dtype}")
        classes, numbers = np.unique(y, return_counts=True)
        counts = {str(int(c)): int(n) for c, n in zip(classes, numbers, strict=True)}
        if spec.allowed_labels is not None:
            extra = sorted(set(int(c) for c in classes) - set(spec.allowed_labels))
            if extra:
                raise DatasetInvalid(f"labels {extra} are not among the allowed "
                                     f"{list(spec.allowed_labels)}")
    elif not np.isfinite(y.astype(np.float64)).all():
        raise DatasetInvalid("labels hold NaN or infinite values")
    if len(arrays) < spec.min_rows:
        raise DatasetInvalid(f"{len(arrays)} rows, at least {spec.min_rows} required")
    if spec.task == "classification":
        wanted = spec.allowed_labels if spec.allowed_labels is not None else tuple(
            int(c) for c in counts)
        if len([c for c in wanted if counts.get(str(c), 0) > 0]) < 2:
            raise DatasetInvalid(f"only one class present ({counts}); two or more needed")
        short = {c: counts.get(str(c), 0) for c in wanted
                 if counts.get(str(c), 0) < spec.min_per_class}
        if short:
            raise DatasetInvalid(f"too few rows of class(es) {short}, at least "
                                 f"{spec.min_per_class} each required")
    return counts


# ------------------------------------------------------------------ from the request log


def snapshot_from_log(
    store: RequestStore, model: str, *, since_us: int | None, until_us: int | None,
    task: str = "classification", input_name: str | None = None, limit: int | None = None,
) -> tuple[DatasetArrays, dict[str, int]]:
    """The labelled primary traffic of ``model`` in ``[since_us, until_us)`` and the
    count of labelled records skipped by reason (no payload, shape mismatch …).

    Classification labels that arrive as floats with integral values become int64;
    other floats are kept, for ``validate`` to refuse.
    """
    found = build_training_set(store, model, since=since_us, until=until_us,
                               input_name=input_name, limit=limit)
    skipped = dict(found.skipped_reasons)
    if len(found) == 0:
        empty = DatasetArrays(np.empty((0, 0), np.float32), np.empty(0, np.int64),
                              np.empty(0, np.int64))
        return empty, skipped
    features = found.features.reshape(len(found), -1)
    labels = found.labels
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if task == "classification" and labels.dtype.kind == "f" and np.all(
            np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    return DatasetArrays(features, labels, found.timestamps_us.astype(np.int64)), skipped


def _rows(record: LoggedRequest, input_name: str | None) -> np.ndarray | None:
    if not record.payload_captured or not record.inputs:
        return None
    tensor: Tensor | None = record.inputs[0]
    if input_name is not None or len(record.inputs) != 1:
        tensor = next((t for t in record.inputs if t.name == input_name), None)
    if tensor is None:
        return None
    array = tensor.to_numpy()
    return array.reshape(1, -1) if array.ndim <= 1 else array.reshape(array.shape[0], -1)


def recent_inputs(
    store: RequestStore, model: str, *, since_us: int | None = None,
    until_us: int | None = None, version: int | None = None, input_name: str | None = None,
    limit: int | None = None,
) -> np.ndarray:
    """The input rows of ``model``'s primary logged requests in time order (labelled or
    not), float64 [n, f]; records without a captured payload or of another width are
    skipped."""
    parts: list[np.ndarray] = []
    width: int | None = None
    for record in store.query_requests(model, version=version, since=since_us, until=until_us,
                                       include_shadow=False, limit=limit):
        rows = _rows(record, input_name)
        if rows is None or rows.dtype.kind not in "biuf":
            continue
        width = rows.shape[1] if width is None else width
        if rows.shape[1] == width:
            parts.append(rows.astype(np.float64))
    return np.concatenate(parts) if parts else np.empty((0, width or 0))


# ------------------------------------------------------------------------ storage


@dataclass(frozen=True)
class Dataset:
    id: int
    model: str
    version: int
    content_sha256: str
    artifact_sha256: str
    rows: int
    n_features: int
    source: str
    window_start_us: int | None
    window_end_us: int | None
    label_counts: dict[str, int]
    profiles: tuple[FeatureProfile, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None
    created_at: datetime | None = None

    def summary(self) -> dict[str, Any]:
        """Plain JSON for lineage and listings (profiles left out)."""
        return {"id": self.id, "model": self.model, "version": self.version,
                "content_sha256": self.content_sha256, "rows": self.rows,
                "n_features": self.n_features, "source": self.source,
                "window_start_us": self.window_start_us, "window_end_us": self.window_end_us,
                "label_counts": dict(self.label_counts)}


class DatasetStore:
    """Repository of datasets (rows in the database, arrays in ``artifacts``);
    thread-safe. Raises ``ModelNotFound``, ``DatasetNotFound``, ``StorageUnavailable``
    and the artifact store's errors."""

    def __init__(
        self, db: Database, artifacts: ArtifactStore, *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._db = db
        self._artifacts = artifacts
        self._clock = clock

    def save(
        self, model: str, arrays: DatasetArrays, *, source: str,
        window: tuple[int | None, int | None] = (None, None), run_id: int | None = None,
        feature_names: Sequence[str] | None = None, label_counts: Mapping[str, int] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Dataset, bool]:
        """Store ``arrays`` as the model's next dataset version; True when created (False:
        the same content was already stored, and that dataset is returned)."""
        content = arrays.content_sha256()
        existing = self._by_content(model, content)
        if existing is not None:
            return existing, False
        if label_counts is None:
            classes, numbers = np.unique(arrays.labels, return_counts=True)
            label_counts = {str(c.item()): int(n) for c, n in zip(classes, numbers, strict=True)}
        profiles = profile_features(arrays.features.astype(np.float64), feature_names)
        artifact, _ = self._artifacts.put(arrays.to_npz())
        meta = {**dict(metadata or {}), "feature_names": [p.name for p in profiles]}
        # ``source`` is a label (a version's free-form source may be long): cut to the
        # column's width, which PostgreSQL enforces.
        for attempt in range(1, _SAVE_ATTEMPTS + 1):
            try:
                with self._db.write() as s:
                    if s.get(ModelRow, model) is None:
                        raise ModelNotFound(model)
                    latest = s.scalar(select(func.max(_D.version)).where(_D.model == model))
                    result = s.execute(insert(dataset_table).values(
                        model=model, version=(latest or 0) + 1, content_sha256=content,
                        artifact_sha256=artifact, rows=len(arrays),
                        n_features=int(arrays.features.shape[1]), source=source[:64],
                        window_start_us=window[0], window_end_us=window[1],
                        label_counts=dict(label_counts),
                        stats={"features": [p.to_json() for p in profiles]}, metadata=meta,
                        run_id=run_id, created_at=self._clock()))
                    new_id = _inserted_id(result)
                    row = s.execute(select(dataset_table).where(_D.id == new_id)).mappings()
                    return _dataset(row.one()), True
            except ConflictError:
                # Same content saved concurrently, or our version number was taken.
                existing = self._by_content(model, content)
                if existing is not None:
                    return existing, False
                if attempt == _SAVE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _by_content(self, model: str, content: str) -> Dataset | None:
        with self._db.read() as s:
            row = s.execute(select(dataset_table).where(
                _D.model == model, _D.content_sha256 == content)).mappings().first()
            return None if row is None else _dataset(row)

    def get(self, dataset_id: int) -> Dataset:
        with self._db.read() as s:
            row = s.execute(select(dataset_table).where(_D.id == dataset_id)).mappings().first()
            if row is None:
                raise DatasetNotFound(str(dataset_id))
            return _dataset(row)

    def list(self, model: str, *, limit: int = 100) -> list[Dataset]:
        """The model's datasets, newest first."""
        with self._db.read() as s:
            rows = s.execute(select(dataset_table).where(_D.model == model)
                             .order_by(_D.version.desc()).limit(limit)).mappings()
            return [_dataset(r) for r in rows]

    def load(self, dataset: Dataset) -> DatasetArrays:
        """The stored arrays (verified against the artifact digest; never unpickled)."""
        return DatasetArrays.from_npz(self._artifacts.read(dataset.artifact_sha256))

    def link(self, model: str, version: int, dataset_id: int) -> None:
        """Record that ``version`` was trained on ``dataset_id`` (replacing any link)."""
        with self._db.write() as s:
            values = {"dataset_id": dataset_id, "created_at": self._clock()}
            where = (_L.model == model, _L.version == version)
            if s.execute(select(_L.dataset_id).where(*where)).first() is None:
                s.execute(insert(dataset_link_table).values(model=model, version=version,
                                                            **values))
            else:
                s.execute(update(dataset_link_table).where(*where).values(**values))

    def for_version(self, model: str, version: int) -> Dataset | None:
        """The dataset ``version`` was trained on, if one is linked."""
        with self._db.read() as s:
            row = s.execute(select(dataset_table).join(
                dataset_link_table, _L.dataset_id == _D.id).where(
                _L.model == model, _L.version == version)).mappings().first()
            return None if row is None else _dataset(row)


def _dataset(row: RowMapping) -> Dataset:
    return Dataset(
        id=int(row["id"]), model=row["model"], version=row["version"],
        content_sha256=row["content_sha256"], artifact_sha256=row["artifact_sha256"],
        rows=int(row["rows"]), n_features=row["n_features"], source=row["source"],
        window_start_us=row["window_start_us"], window_end_us=row["window_end_us"],
        label_counts={str(k): int(v) for k, v in row["label_counts"].items()},
        profiles=tuple(FeatureProfile.from_json(p) for p in row["stats"].get("features", [])),
        metadata=dict(row["metadata"]), run_id=row["run_id"], created_at=row["created_at"],
    )


def _inserted_id(result: Any) -> int:
    key = cast(CursorResult[Any], result).inserted_primary_key
    if key is None:  # every dialect we support returns it for a single-row insert
        raise RuntimeError("the database did not return the new row's id")
    return int(key[0])
