"""Run tracking: the database allows one active run per model, whoever asks; steps,
metrics and heartbeats are recorded; stale runs are failed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert

from lifecycle.db import Database, make_engine, run_table
from lifecycle.errors import ConflictError, InvalidArgument, ModelNotFound
from lifecycle.loop_errors import RunInProgress, RunNotFound
from lifecycle.runs import RunStore
from tests.lifecycle_loop.conftest import Loop
from tests.lifecycle_loop.helpers import MODEL


@pytest.fixture
def db_url(database_url: str) -> str:
    """A store contract: every test here runs on SQLite and PostgreSQL."""
    return database_url


def test_one_active_run_per_model_even_from_a_second_database(
    loop: Loop, db_url: str,
) -> None:
    first = loop.runs.create(MODEL, trigger="drift", reason="psi", actor="scheduler")
    assert first.status == "queued" and first.active
    with pytest.raises(RunInProgress, match=f"run {first.id}"):
        loop.runs.create(MODEL, trigger="manual", reason="again", actor="alice")

    other = Database(make_engine(db_url))
    try:
        with pytest.raises(RunInProgress):
            RunStore(other).create(MODEL, trigger="manual", reason="again", actor="bob")
        # The unique index itself refuses a second active row, with no check before it.
        now = loop.clock()
        row = {"model": MODEL, "status": "running", "trigger": "manual", "reason": "raw",
               "actor": "raw", "params": {}, "metrics": {}, "outcome": "", "error": "",
               "created_at": now, "heartbeat_at": now}
        with pytest.raises(ConflictError), other.write() as s:
            s.execute(insert(run_table).values(**row))
        loop.runs.start(first.id)
        loop.runs.finish(first.id, "succeeded", outcome="registered")
        with other.write() as s:
            s.execute(insert(run_table).values(**row))
        with pytest.raises(RunInProgress):
            loop.runs.create(MODEL, trigger="manual", reason="third", actor="alice")
    finally:
        other.close()


def test_a_run_records_its_steps_metrics_and_end(loop: Loop) -> None:
    run = loop.runs.create(MODEL, trigger="manual", reason="why", actor="alice",
                           params={"config": {"seed": 1}, "nan": float("nan")})
    assert run.params == {"config": {"seed": 1}, "nan": None}
    started = loop.runs.start(run.id)
    assert started.status == "running" and started.started_at == loop.clock()
    with pytest.raises(RunNotFound):
        loop.runs.start(run.id)  # not queued any more

    first = loop.runs.begin_step(run.id, "snapshot", {"params": {"window_s": 60}})
    loop.clock.advance(5)
    loop.runs.end_step(run.id, first, "succeeded", duration_s=5.0,
                       detail={"rows": 10}, log="10 rows")
    second = loop.runs.begin_step(run.id, "train")
    loop.runs.update(run.id, metrics={"roc_auc": 0.9}, dataset_id=7, candidate_version=3)
    loop.runs.update(run.id, metrics={"accuracy": 0.8}, champion_version=1)
    loop.clock.advance(5)
    finished = loop.runs.finish(run.id, "failed", error="train: boom")

    assert (first, second) == (0, 1)
    assert finished.status == "failed" and finished.error == "train: boom"
    assert finished.finished_at == loop.clock()
    got = loop.runs.get(run.id)
    assert got.metrics == {"roc_auc": 0.9, "accuracy": 0.8}
    assert (got.dataset_id, got.candidate_version, got.champion_version) == (7, 3, 1)
    snapshot, train = got.steps
    assert (snapshot.name, snapshot.status, snapshot.duration_s) == ("snapshot", "succeeded", 5)
    assert snapshot.detail == {"params": {"window_s": 60}, "rows": 10}
    assert snapshot.log == "10 rows"
    assert (train.name, train.status, train.log) == ("train", "failed", "train: boom")
    with pytest.raises(RunNotFound):
        loop.runs.finish(run.id, "succeeded")
    with pytest.raises(InvalidArgument):
        loop.runs.finish(run.id, "running")


def test_listing_and_lookups(loop: Loop) -> None:
    ids = []
    for trigger in ("manual", "interval", "drift"):
        run = loop.runs.create(MODEL, trigger=trigger, reason=trigger, actor="test")
        loop.runs.finish(run.id, "succeeded")
        ids.append(run.id)
    assert [r.id for r in loop.runs.list(MODEL)] == ids[::-1]
    assert [r.id for r in loop.runs.list(MODEL, limit=1)] == ids[-1:]
    assert loop.runs.list("other") == []
    last_interval = loop.runs.last(MODEL, trigger="interval")
    assert last_interval is not None and last_interval.id == ids[1]
    assert loop.runs.active(MODEL) is None
    with pytest.raises(RunNotFound):
        loop.runs.get(999)
    with pytest.raises(ModelNotFound):
        loop.runs.create("other", trigger="manual", reason="", actor="test")


def test_stale_runs_are_failed_and_fresh_ones_kept(loop: Loop) -> None:
    stale = loop.runs.create(MODEL, trigger="manual", reason="old", actor="test")
    loop.runs.start(stale.id)
    loop.runs.begin_step(stale.id, "train")
    loop.clock.advance(120)
    assert loop.runs.fail_stale(loop.clock() - timedelta(seconds=60), reason="gone") == [
        stale.id]
    failed = loop.runs.get(stale.id)
    assert failed.status == "failed" and failed.error == "gone"
    assert failed.steps[0].status == "failed"

    fresh = loop.runs.create(MODEL, trigger="manual", reason="new", actor="test")
    loop.clock.advance(30)
    loop.runs.heartbeat(fresh.id)
    loop.clock.advance(45)
    assert loop.runs.fail_stale(loop.clock() - timedelta(seconds=60), reason="gone") == []
    assert loop.runs.get(fresh.id).active
