"""The request store: idempotent inserts, queries, the feedback join, purges; on SQLite
and PostgreSQL."""

from __future__ import annotations

import itertools

import pytest

from lifecycle.db import Database
from lifecycle.errors import NotFoundError, StorageUnavailable
from lifecycle.request_records import FeedbackEntry, Label, RequestEntry, Tensor, encode_tensors
from lifecycle.request_store import RequestStore
from loadtests.database_lock import write_locked

_ids = itertools.count(1)


def entry(request_id: str, ts: int, *, model: str = "m", version: int = 1,
          shadow: bool = False, payload: bool = True) -> RequestEntry:
    blob = encode_tensors([Tensor("x", "INT64", (1,), ts.to_bytes(8, "little"))])
    return RequestEntry(
        record_id=f"{next(_ids):032x}", request_id=request_id, model=model, version=version,
        timestamp_us=ts, latency_us=5, status="OK", inputs=blob if payload else None,
        outputs=blob if payload else None, metadata={"k": "v"}, shadow=shadow,
    )


def feedback(request_id: str, label: int | float | Tensor, received: int, *,
             model: str = "m") -> FeedbackEntry:
    return FeedbackEntry(
        feedback_id=f"{next(_ids):032x}", request_id=request_id, model=model,
        label=Label.of(label), timestamp_us=received - 1, received_at_us=received,
    )


def labels(store: RequestStore, model: str = "m") -> dict[str, object]:
    return {r.record_id: (r.feedback.label.value if r.feedback else None)
            for r in store.query_requests(model)}


def test_inserts_are_idempotent_and_rows_come_back_as_stored(store: RequestStore) -> None:
    a, b = entry("r1", 100), entry("r2", 200, payload=False)
    store.insert([a, b])
    store.insert([a, b, a])
    assert store.count("m") == 2
    got = store.get_request(a.record_id)
    assert (got.request_id, got.version, got.timestamp_us, got.latency_us, got.status,
            got.metadata, got.shadow, got.payload_captured) == (
        "r1", 1, 100, 5, "OK", {"k": "v"}, False, True)
    assert encode_tensors(got.inputs) == a.inputs
    bare = store.get_request(b.record_id)
    assert bare.inputs == () and not bare.payload_captured
    with pytest.raises(NotFoundError):
        store.get_request("0" * 32)


def test_feedback_before_or_after_its_request_joins_it(store: RequestStore) -> None:
    early = feedback("before", 1, received=50)
    store.insert(feedback=[early])
    assert store.count("m", has_feedback=True) == 0
    first = entry("before", 10)
    second = entry("after", 20)
    store.insert([first, second])
    store.insert(feedback=[feedback("after", 2.5, received=60)])
    assert labels(store) == {first.record_id: 1, second.record_id: 2.5}
    joined = store.get_request(first.record_id).feedback
    assert joined is not None
    assert (joined.feedback_id, joined.timestamp_us, joined.received_at_us, joined.count) == (
        early.feedback_id, 49, 50, 1)
    assert store.count("m", has_feedback=True) == 2
    assert store.count("m", has_feedback=False) == 0


def test_duplicate_feedback_latest_received_wins_and_is_counted(store: RequestStore) -> None:
    record = entry("r", 10)
    store.insert([record])
    store.insert(feedback=[feedback("r", 1, received=300), feedback("r", 2, received=100)])
    store.insert(feedback=[feedback("r", 3, received=200)])
    joined = store.get_request(record.record_id).feedback
    assert joined is not None and joined.label == Label("int", 1) and joined.count == 3


def test_a_reused_request_id_labels_only_the_latest_primary_record(
    store: RequestStore,
) -> None:
    old, new = entry("same", 10), entry("same", 20)
    shadow_later = entry("same", 30, shadow=True, version=2)
    other_model = entry("same", 40, model="other")
    store.insert([old, new, shadow_later, other_model])
    store.insert(feedback=[feedback("same", 7, received=100)])
    assert labels(store) == {old.record_id: None, new.record_id: 7, shadow_later.record_id: None}
    assert labels(store, "other") == {other_model.record_id: None}
    assert [r.record_id for r in store.query_requests("m", include_shadow=False)] == [
        old.record_id, new.record_id]


def test_tensor_labels_round_trip(store: RequestStore) -> None:
    tensor = Tensor("y", "FP16", (2,), b"\x01\x7e\x00\x80")
    store.insert([entry("t", 1)], [feedback("t", tensor, received=2)])
    (row,) = store.query_requests("m")
    assert row.feedback is not None and row.feedback.label == Label("tensor", tensor)


def test_queries_filter_and_stream_in_time_order_across_pages(
    store: RequestStore, db: Database
) -> None:
    paged = RequestStore(db, page_size=3)
    entries = [entry(f"r{i}", ts=1000 + i // 2, version=1 + i % 2) for i in range(20)]
    store.insert(list(reversed(entries)))
    store.insert(feedback=[feedback(f"r{i}", i, received=5000) for i in range(0, 20, 4)])
    ordered = [r.timestamp_us for r in paged.query_requests("m")]
    assert ordered == sorted(ordered) and len(ordered) == 20
    assert len({r.record_id for r in paged.query_requests("m")}) == 20
    assert [r.record_id for r in paged.query_requests("m", limit=7)] == [
        r.record_id for r in paged.query_requests("m")][:7]
    assert paged.count("m", version=2) == 10
    assert {r.version for r in paged.query_requests("m", version=2)} == {2}
    window = list(paged.query_requests("m", since=1002, until=1005))
    assert {r.timestamp_us for r in window} == {1002, 1003, 1004} and len(window) == 6
    assert paged.count("m", since=1002, until=1005) == 6
    labelled = list(paged.query_requests("m", has_feedback=True))
    assert sorted(r.request_id for r in labelled) == sorted(f"r{i}" for i in range(0, 20, 4))
    assert paged.count("m", has_feedback=False) == 15
    assert list(paged.query_requests("nobody")) == []


def test_unmatched_feedback_is_reported_after_the_join_window_and_purged(db: Database) -> None:
    now = [10_000_000]
    store = RequestStore(db, join_window_s=1.0, clock_us=lambda: now[0])
    store.insert([entry("known", 5)])
    matched = feedback("known", 1, received=1_000)
    orphan_old = feedback("lost", 2, received=2_000)
    orphan_other = feedback("lost", 3, received=3_000, model="other")
    orphan_recent = feedback("late", 4, received=9_500_000)
    store.insert(feedback=[matched, orphan_old, orphan_other, orphan_recent])
    # Only a shadow record carries the id: still unmatched.
    store.insert([entry("lost", 6, shadow=True)])

    assert store.unmatched_feedback() == [orphan_old, orphan_other]
    assert store.unmatched_feedback(model="other") == [orphan_other]
    assert store.unmatched_feedback(older_than=10_000_000) == [
        orphan_old, orphan_other, orphan_recent]
    assert store.purge_unmatched_feedback(batch_size=1) == 2
    assert store.unmatched_feedback(older_than=10**12) == [orphan_recent]
    # Within its window, feedback still joins a request that arrives late.
    late = entry("late", 9_000_000)
    store.insert([late])
    assert store.get_request(late.record_id).feedback is not None
    now[0] = 10**12
    assert store.unmatched_feedback() == []


def test_purge_before_deletes_old_rows_in_batches(store: RequestStore) -> None:
    store.insert([entry(f"r{i}", ts=i) for i in range(25)]
                 + [entry("x", ts=3, model="other")])
    store.insert(feedback=[feedback(f"r{i}", i, received=i + 1) for i in range(25)])
    result = store.purge_before(10, model="m", batch_size=4)
    assert (result.requests, result.feedback) == (10, 9)
    assert store.count("m") == 15 and store.count("other") == 1
    assert min(r.timestamp_us for r in store.query_requests("m")) == 10
    everything = store.purge_before(10**6, batch_size=7)
    assert (everything.requests, everything.feedback) == (16, 16)
    assert store.count("m") == store.count("other") == 0


def test_a_locked_database_is_storage_unavailable_and_nothing_is_written(
    store: RequestStore, database_url: str
) -> None:
    with write_locked(database_url), pytest.raises(StorageUnavailable):
        store.insert([entry("r", 1)])
    assert store.count("m") == 0
