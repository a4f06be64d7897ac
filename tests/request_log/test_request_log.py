"""The engine end to end on a real database (SQLite and PostgreSQL): nothing lost,
nothing duplicated, serving never blocked."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.request_log import (
    FeedbackRecord,
    Label,
    LoggingPolicy,
    RequestLog,
    RequestLogConfig,
    RequestRecord,
)
from gateway.types import InferInput, InferOutput
from lifecycle.db import Database
from lifecycle.request_export import build_training_set
from lifecycle.request_store import RequestStore
from loadtests.database_lock import write_locked
from tests.request_log.conftest import record, sample
from tests.request_log.test_records import arrays_of_every_datatype, expected_bytes
from tests.support.waiting import wait_until

MakeLog = Callable[..., tuple[RequestLog, CollectorRegistry]]


def test_n_logged_records_are_n_rows_with_byte_exact_tensors(
    make_log: MakeLog, store: RequestStore
) -> None:
    request_log, registry = make_log(batch_max=64)
    arrays = arrays_of_every_datatype()
    inputs = [InferInput(f"in_{dt}", dt, a) for dt, a in arrays.items()]
    logged = {}
    for i in range(300):
        output = InferOutput("out", "FP64", np.array([[i, -i]], dtype=np.float64))
        rec = RequestRecord(model="all", version=2, request_id=f"q{i}", inputs=inputs,
                            outputs=[output], latency_us=i, metadata={"tenant": str(i % 3)})
        assert request_log.log(rec)
        logged[rec.record_id] = rec
    assert request_log.flush(20)
    rows = list(store.query_requests("all"))
    assert len(rows) == 300 and {r.record_id for r in rows} == set(logged)
    for row in rows:
        sent = logged[row.record_id]
        assert (row.request_id, row.version, row.latency_us, row.timestamp_us, row.metadata) == (
            sent.request_id, 2, sent.latency_us, sent.timestamp_us, sent.metadata)
        assert [(t.name, t.datatype, t.shape, t.data) for t in row.inputs] == [
            (f"in_{dt}", dt, a.shape, expected_bytes(dt, a)) for dt, a in arrays.items()]
        (out,) = row.outputs
        assert out.data == sent.outputs[0].array.tobytes()  # type: ignore[union-attr]
    assert sample(registry, "gateway_request_log_logged_total", kind="request") + sample(
        registry, "gateway_request_log_replayed_total", kind="request") == 300


def test_the_export_of_labelled_traffic_has_every_id(
    make_log: MakeLog, store: RequestStore
) -> None:
    request_log, _ = make_log()
    rng = np.random.default_rng(3)
    sent = {}
    for i in range(200):
        features = rng.random((1, 4), dtype=np.float32)
        rec = RequestRecord(
            model="lr", version=1 + i % 2, request_id=f"q{i}",
            inputs=[InferInput("features", "FP32", features)],
            outputs=[InferOutput("scores", "FP32", features[:, :2] * 2)],
        )
        assert request_log.log(rec)
        # Half the labels arrive before their request is written, half after.
        assert request_log.log_feedback(FeedbackRecord(model="lr", request_id=f"q{i}",
                                                       label=Label.of(i % 3)))
        sent[rec.record_id] = (features, i % 3)
    assert request_log.flush(20)
    exported = build_training_set(store, "lr")
    assert len(exported) == 200 and set(exported.record_ids.tolist()) == set(sent)
    for i, record_id in enumerate(exported.record_ids.tolist()):
        features, label = sent[record_id]
        assert exported.features[i].tobytes() == features[0].tobytes()
        assert exported.labels[i] == label
    assert set(exported.versions.tolist()) == {1, 2}


def test_a_database_locked_mid_load_loses_and_duplicates_nothing(
    make_log: MakeLog, store: RequestStore, database_url: str
) -> None:
    request_log, registry = make_log(batch_max=50, flush_interval_s=0.01)
    ids: list[str] = []

    def log_some(count: int) -> None:
        for _ in range(count):
            rec = record(request_id=f"q{len(ids)}")
            assert request_log.log(rec)
            ids.append(rec.record_id)

    log_some(300)
    wait_until(lambda: store.count("m") == 300)
    with write_locked(database_url):
        log_some(300)
        wait_until(lambda: sample(registry, "gateway_request_log_failed_inserts_total") > 0)
        # Serving went on: everything is journaled (and spilled: only the journal holds
        # it, so it must come back by replay), nothing reached the database.
        wait_until(lambda: request_log.queue_depth == 0 and request_log.backlog_bytes > 0
                   and sample(registry, "gateway_request_log_spilled_total",
                              kind="request") >= 300)
        assert store.count("m") == 300
        log_some(100)
    assert request_log.flush(20)
    stored = [r.record_id for r in store.query_requests("m")]
    assert len(stored) == 700 and set(stored) == set(ids)
    assert sample(registry, "gateway_request_log_replayed_total", kind="request") >= 300
    assert sample(registry, "gateway_request_log_spilled_total", kind="request") >= 300
    assert registry.get_sample_value("gateway_request_log_dropped_total",
                                     {"kind": "request", "reason": "queue_full"}) == 0


def test_stop_writes_every_queued_record_and_trims_the_journal(
    make_log: MakeLog, store: RequestStore, journal_dir: Path
) -> None:
    # A long flush interval: the records are still queued when stop() is called.
    request_log, _ = make_log(flush_interval_s=30.0, batch_max=100_000)
    for i in range(1000):
        assert request_log.log(record(request_id=f"q{i}"))
    assert request_log.queue_depth > 0
    assert request_log.stop(20)
    assert store.count("m") == 1000
    assert list(journal_dir.glob("*.seg")) == []
    assert not request_log.log(record())


def test_stop_with_the_database_down_keeps_records_for_the_next_start(
    store: RequestStore, database_url: str, journal_dir: Path
) -> None:
    config = RequestLogConfig(journal_dir=journal_dir, retry_initial_s=0.01)
    first = RequestLog(config, store, CollectorRegistry())
    first.start()
    ids = set()
    with write_locked(database_url):
        for i in range(200):
            rec = record(request_id=f"q{i}")
            first.log(rec)
            ids.add(rec.record_id)
        assert not first.stop(5)
    assert store.count("m") == 0
    # The last write was torn by a crash: half a frame at the end of the last segment.
    last = sorted(journal_dir.glob("*.seg"))[-1]
    with open(last, "ab") as f:
        f.write((1000).to_bytes(4, "little") + b"\x00\x00")

    registry = CollectorRegistry()
    second = RequestLog(config, store, registry)
    recovery = second.start()
    try:
        assert recovery.pending_frames == 200 and recovery.truncated_bytes == 6
        assert second.flush(20)
        assert {r.record_id for r in store.query_requests("m")} == ids
        assert store.count("m") == 200
        assert sample(registry, "gateway_request_log_replayed_total", kind="request") == 200
        assert sample(registry, "gateway_request_log_journal_truncated_bytes_total") == 6
    finally:
        assert second.stop(5)


def test_a_stalled_sink_drops_newest_counted_with_bounded_memory_and_never_blocks(
    make_log: MakeLog, store: RequestStore, database_url: str
) -> None:
    queue_max, budget = 20, 16 * 1024
    request_log, registry = make_log(queue_max=queue_max, batch_max=10, segment_bytes=4096,
                                     journal_budget_bytes=budget, flush_interval_s=0.005)
    accepted: list[str] = []
    refused, slowest = 0, 0.0
    with write_locked(database_url):
        for i in range(3000):
            rec = record(request_id=f"q{i}")
            t0 = time.perf_counter()
            ok = request_log.log(rec)
            slowest = max(slowest, time.perf_counter() - t0)
            if ok:
                accepted.append(rec.record_id)
            else:
                refused += 1
            assert request_log.queue_depth <= queue_max
            assert request_log.journal_bytes <= budget
            if i % 100 == 0:
                time.sleep(0.001)  # let the writer run: a steady load, not one burst
        assert refused > 0 and store.count("m") == 0
    dropped = sum(sample(registry, "gateway_request_log_dropped_total", kind="request",
                         reason=reason) for reason in ("queue_full", "journal_full"))
    assert dropped == refused
    assert sample(registry, "gateway_request_log_dropped_total", kind="request",
                  reason="journal_full") > 0
    # Not a performance assertion: log() must not wait for the stalled sink.
    assert slowest < 0.05
    assert request_log.flush(20)
    stored = [r.record_id for r in store.query_requests("m")]
    assert len(stored) == len(accepted) and set(stored) == set(accepted)


def test_feedback_goes_through_the_log_and_joins_before_or_after(
    make_log: MakeLog, store: RequestStore
) -> None:
    request_log, registry = make_log()
    assert request_log.log_feedback(FeedbackRecord(model="m", request_id="early",
                                                   label=Label.of(1)))
    assert request_log.flush(10)
    assert request_log.log(early := record(request_id="early"))
    assert request_log.log(late := record(request_id="late"))
    assert request_log.flush(10)
    assert request_log.log_feedback(FeedbackRecord(model="m", request_id="late",
                                                   label=Label.of(0.5), timestamp_us=123))
    assert request_log.log_feedback(FeedbackRecord(model="m", request_id="late",
                                                   label=Label.of(0.75)))
    assert request_log.flush(10)
    first = store.get_request(early.record_id).feedback
    second = store.get_request(late.record_id).feedback
    assert first is not None and first.label == Label("int", 1) and first.count == 1
    assert second is not None and second.label == Label("float", 0.75) and second.count == 2
    assert sample(registry, "gateway_request_log_logged_total", kind="feedback") + sample(
        registry, "gateway_request_log_replayed_total", kind="feedback") == 3


def test_policies_sample_and_limit_payloads(make_log: MakeLog, store: RequestStore) -> None:
    request_log, registry = make_log()
    request_log.set_policy("off", LoggingPolicy(sample_rate=0.0))
    request_log.set_policy("bare", LoggingPolicy(capture_payload=False))
    request_log.set_policy("small", LoggingPolicy(max_payload_bytes=10))
    assert not request_log.log(record("off"))
    assert sample(registry, "gateway_request_log_sampled_out_total") == 1
    assert request_log.log(bare := record("bare"))
    assert request_log.log(small := record("small"))
    request_log.set_policy("small", None)
    assert request_log.policy("small") == LoggingPolicy()
    assert request_log.flush(10)
    assert store.count("off") == 0
    got_bare, got_small = store.get_request(bare.record_id), store.get_request(small.record_id)
    assert not got_bare.payload_captured and not got_bare.payload_dropped
    assert not got_small.payload_captured and got_small.payload_dropped


def test_bad_records_are_counted_never_raised_and_do_not_sink_their_batch(
    make_log: MakeLog, store: RequestStore, db: Database
) -> None:
    with db.engine.begin() as conn:
        if db.dialect == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON request_log "
                "WHEN NEW.request_id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the database'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.request_id = 'poison' THEN RAISE EXCEPTION 'refused by the database'; "
                "END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON request_log "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
    request_log, registry = make_log(flush_interval_s=1.0)
    assert not request_log.log(object())  # type: ignore[arg-type]
    unencodable = record(request_id="fp8")
    unencodable.inputs = [InferInput("x", "FP8", np.zeros(1))]
    assert request_log.log(unencodable)
    assert request_log.log(record(request_id="poison"))
    assert request_log.log(good := record(request_id="good"))
    assert request_log.flush(10)
    assert [r.record_id for r in store.query_requests("m")] == [good.record_id]
    for reason in ("error", "invalid", "rejected"):
        assert sample(registry, "gateway_request_log_dropped_total", kind="request",
                      reason=reason) == 1, reason


@pytest.mark.parametrize("option", [{"queue_max": 0}, {"flush_interval_s": 0},
                                    {"segment_bytes": 10, "journal_budget_bytes": 5}])
def test_config_is_validated(tmp_path: Path, option: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RequestLogConfig(journal_dir=tmp_path, **option)  # type: ignore[arg-type]
