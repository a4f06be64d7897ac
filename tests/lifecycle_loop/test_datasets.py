"""Dataset snapshots: validation, versioned storage without pickle, links to versions, the
time-based split, and the bootstrap version's training data registered after the fact."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from lifecycle.bootstrap import DemoModel
from lifecycle.datasets import (
    DatasetArrays,
    DatasetSpec,
    recent_inputs,
    snapshot_from_log,
    split_by_time,
    validate,
)
from lifecycle.loop_errors import DatasetInvalid, DatasetNotFound
from lifecycle.request_records import FeedbackEntry, Label, RequestEntry
from lifecycle.synthetic import FEATURE_NAMES, FraudGenerator
from lifecycle.triggers import register_bootstrap_dataset
from tests.lifecycle_loop.conftest import Loop
from tests.lifecycle_loop.helpers import MODEL, log_traffic


@pytest.fixture
def db_url(database_url: str) -> str:
    """A store contract: every test here runs on SQLite and PostgreSQL."""
    return database_url


SPEC = DatasetSpec(n_features=20, allowed_labels=(0, 1), min_rows=100, min_per_class=10)


def arrays(n: int = 300, seed: int = 1) -> DatasetArrays:
    X, y = FraudGenerator(seed).sample(n)
    return DatasetArrays(X, y, np.arange(n, dtype=np.int64))


def test_a_valid_dataset_reports_its_label_counts() -> None:
    data = arrays()
    counts = validate(data, SPEC)
    assert sum(counts.values()) == 300 and set(counts) == {"0", "1"}


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: DatasetArrays(d.features.astype(np.float64), d.labels, d.timestamps_us),
     "features must be float32, got float64"),
    (lambda d: DatasetArrays(d.features[:, :19], d.labels, d.timestamps_us),
     r"features must have shape \[n, 20\], got \[300, 19\]"),
    (lambda d: DatasetArrays(d.features, np.where(d.labels == 1, 2, 0), d.timestamps_us),
     r"labels \[2\] are not among the allowed \[0, 1\]"),
    (lambda d: DatasetArrays(d.features, d.labels.astype(np.float64), d.timestamps_us),
     "classification labels must be integers"),
    (lambda d: d.take(np.arange(99)), "99 rows, at least 100 required"),
    (lambda d: d.take(np.flatnonzero(d.labels == 0)), "only one class present"),
    (lambda d: d.take(np.concatenate([np.flatnonzero(d.labels == 0),
                                      np.flatnonzero(d.labels == 1)[:9]])),
     r"too few rows of class\(es\) \{1: 9\}, at least 10 each required"),
    (lambda d: d.take(np.arange(0)), "the dataset is empty"),
])
def test_invalid_datasets_are_refused_with_the_reason(
    change: Callable[[DatasetArrays], DatasetArrays], message: str,
) -> None:
    with pytest.raises(DatasetInvalid, match=message):
        validate(change(arrays()), SPEC)


def test_regression_labels_must_be_finite() -> None:
    data = arrays()
    labels = data.labels.astype(np.float64)
    labels[3] = np.inf
    spec = DatasetSpec(n_features=20, task="regression", min_rows=10)
    assert validate(DatasetArrays(data.features, labels * 0.5 + 0.1, data.timestamps_us)
                    .take(np.arange(3)), DatasetSpec(20, task="regression", min_rows=1)) == {}
    with pytest.raises(DatasetInvalid, match="labels hold NaN or infinite values"):
        validate(DatasetArrays(data.features, labels, data.timestamps_us), spec)


def test_the_newest_rows_are_held_out() -> None:
    data = arrays(10)
    shuffled = data.take(np.array([9, 3, 0, 7, 1, 8, 2, 6, 4, 5]))
    train, holdout = split_by_time(shuffled, 0.25)
    assert holdout.timestamps_us.tolist() == [7, 8, 9]
    assert train.timestamps_us.tolist() == list(range(7))
    assert np.array_equal(holdout.features, data.features[7:])


def test_datasets_are_versioned_deduplicated_and_stored_without_pickle(loop: Loop) -> None:
    data = arrays()
    first, created = loop.datasets.save(MODEL, data, source="request_log", window=(5, 10),
                                        run_id=None, feature_names=FEATURE_NAMES)
    assert created and first.version == 1 and first.rows == 300 and first.n_features == 20
    assert first.window_start_us == 5 and first.window_end_us == 10
    assert first.content_sha256 == data.content_sha256()
    assert [p.name for p in first.profiles] == list(FEATURE_NAMES)
    assert first.metadata["feature_names"] == list(FEATURE_NAMES)

    again, created = loop.datasets.save(MODEL, arrays(), source="request_log")
    assert not created and again == first
    second, created = loop.datasets.save(MODEL, arrays(seed=2), source="request_log")
    assert created and second.version == 2
    assert [d.version for d in loop.datasets.list(MODEL)] == [2, 1]

    loaded = loop.datasets.load(first)
    assert np.array_equal(loaded.features, data.features)
    assert np.array_equal(loaded.labels, data.labels)
    raw = loop.artifacts.read(first.artifact_sha256)
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["features", "labels", "timestamps_us"]
    assert loop.datasets.get(first.id) == first
    with pytest.raises(DatasetNotFound):
        loop.datasets.get(999)

    assert loop.datasets.for_version(MODEL, 1) is None
    loop.datasets.link(MODEL, 1, first.id)
    assert loop.datasets.for_version(MODEL, 1) == first
    loop.datasets.link(MODEL, 1, second.id)
    assert loop.datasets.for_version(MODEL, 1) == second


def test_a_snapshot_reads_the_labelled_primary_traffic_of_a_window(loop: Loop) -> None:
    X, y = FraudGenerator(3).sample(60)
    now = loop.clock.us()
    log_traffic(loop.requests, X[:20], y[:20], end_us=now - 10_000_000)  # before the window
    log_traffic(loop.requests, X[20:50], y[20:50], end_us=now)
    log_traffic(loop.requests, X[50:], None, end_us=now)  # unlabelled
    loop.requests.insert([RequestEntry(
        record_id=uuid.uuid4().hex, request_id="dropped", model=MODEL, version=1,
        timestamp_us=now - 1, latency_us=1, status="OK", inputs=None, outputs=None,
        payload_dropped=True)])
    loop.requests.insert(feedback=[FeedbackEntry(uuid.uuid4().hex, "dropped", MODEL,
                                                 Label.of(1), now - 1, now)])

    data, skipped = snapshot_from_log(loop.requests, MODEL, since_us=now - 5_000_000,
                                      until_us=now)
    assert len(data) == 30 and data.features.dtype == np.float32
    assert np.array_equal(data.features, X[20:50]) and np.array_equal(data.labels, y[20:50])
    assert data.labels.dtype == np.int64
    assert np.all(np.diff(data.timestamps_us) > 0)
    assert skipped == {"no_payload": 1}
    inputs = recent_inputs(loop.requests, MODEL, since_us=now - 5_000_000)
    assert inputs.shape == (40, 20)
    empty, _ = snapshot_from_log(loop.requests, MODEL, since_us=now + 1, until_us=now + 2)
    assert len(empty) == 0
    with pytest.raises(DatasetInvalid, match="empty"):
        validate(empty, SPEC)


def test_the_bootstrapped_version_gets_its_training_data_as_a_dataset(
    loop: Loop, demo: DemoModel,
) -> None:
    dataset = register_bootstrap_dataset(loop.registry, loop.datasets, MODEL)
    assert dataset is not None
    assert dataset.rows == len(demo.y_train) and dataset.source == "bootstrap:synthetic_fraud"
    assert dataset.metadata["verified"] is True and dataset.metadata["version"] == 1
    assert loop.datasets.for_version(MODEL, 1) == dataset
    assert np.array_equal(loop.datasets.load(dataset).features, demo.X_train)
    assert register_bootstrap_dataset(loop.registry, loop.datasets, MODEL) is None

    sha, size = loop.artifacts.put(b"uploaded by hand")
    loop.registry.register_version(MODEL, sha256=sha, size=size, actor="test")
    assert register_bootstrap_dataset(loop.registry, loop.datasets, MODEL, version=2) is None
