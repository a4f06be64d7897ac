"""``gateway serve`` processes under load: SIGTERM writes every queued record, kill -9 loses
at most the last flush interval and duplicates nothing, and a restart replays the journal.

SLACK_S is the stated allowance beyond the flush interval for kill -9: one batch's encode,
write and fsync, plus scheduling on a busy two-core machine.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.db import Database, make_engine
from lifecycle.request_store import RequestStore
from loadtests.database_lock import write_locked
from tests.conftest import write_config
from tests.request_log.gateway_support import AUTH_CONFIG, Clients, Load, metric, metrics
from tests.support.subprocess_gateway import SubprocessGateway
from tests.support.waiting import wait_until

FLUSH_INTERVAL_S = 0.05
SLACK_S = 0.5
pytestmark = pytest.mark.slow


@pytest.fixture
def config(tmp_path: Path, model_files: dict[str, Path]) -> Path:
    return write_config(tmp_path / "gateway.toml", {"fraud": model_files["logreg"]},
                        AUTH_CONFIG + f"[request_log]\nflush_interval_ms = "
                        f"{FLUSH_INTERVAL_S * 1000}\nstop_timeout_s = 2\n")


@pytest.fixture
def clients_of() -> Iterator[list[Clients]]:
    opened: list[Clients] = []
    yield opened
    for c in opened:
        c.close()


def connect(gw: SubprocessGateway, opened: list[Clients]) -> Clients:
    c = Clients(gw.grpc_address, gw.admin_address)
    opened.append(c)
    return c


def replayed(gw: SubprocessGateway) -> bool:
    """The restarted gateway's journal is empty again (every record in the database)."""
    samples = metrics(gw.ports["http"])
    return (metric(samples, "gateway_request_log_backlog_bytes") == 0
            and metric(samples, "gateway_request_log_replayed_total", kind="request") > 0)


def test_kill_9_mid_load_loses_at_most_the_last_flush_interval_and_duplicates_nothing(
        tmp_path: Path, config: Path, clients_of: list[Clients]) -> None:
    data = tmp_path / "data"
    gw = SubprocessGateway(config, data).start()
    try:
        load = Load(connect(gw, clients_of), "fraud", "k9", threads=4).start()
        load.wait_for(300)
        # Halfway the database goes away: from then on the records live only in the
        # journal, so the restart must replay them from it.
        with write_locked(f"sqlite:///{data / 'gateway.db'}"):
            seen = len(load.received)
            load.wait_for(seen + 500)
            assert gw.process is not None
            killed_at = time.monotonic()
            os.kill(gw.process.pid, signal.SIGKILL)
            gw.process.wait(10)
            load.stop()
    finally:
        gw.stop()
    received = load.received
    early = [(round(t - killed_at, 4), f) for t, f in zip(load.failed_at, load.failures,
                                                           strict=True) if t < killed_at]
    assert not early, early[:3]

    with SubprocessGateway(config, data) as restarted:
        c = connect(restarted, clients_of)
        wait_until(lambda: replayed(restarted), timeout=60)
        records = c.query("fraud", omit_payload=True)
    record_ids = [r.record_id for r in records]
    request_ids = [r.request_id for r in records]
    assert len(record_ids) == len(set(record_ids)), "a record was inserted twice"
    assert len(request_ids) == len(set(request_ids)), "a request was logged twice"
    # Logged but never answered (killed in between) is fine; the opposite is the loss.
    missing = {rid: t for rid, t in received.items() if rid not in set(request_ids)}
    late = {rid: round(killed_at - t, 3) for rid, t in missing.items()
            if t < killed_at - FLUSH_INTERVAL_S - SLACK_S}
    assert not late, f"{len(late)} records lost though answered long before the kill: {late}"
    assert len(received) - len(missing) > len(received) // 2
    print(f"kill -9: {len(received)} answered, {len(missing)} missing, latest "
          f"{max(received.values()) - killed_at:+.3f}s, oldest missing "
          f"{min(missing.values(), default=killed_at) - killed_at:+.3f}s")


def test_sigterm_writes_every_queued_record_and_a_locked_database_keeps_them_journaled(
        tmp_path: Path, model_files: dict[str, Path], clients_of: list[Clients]) -> None:
    # A long flush interval: at SIGTERM most records are still in the in-memory queue.
    config = write_config(tmp_path / "gateway.toml", {"fraud": model_files["logreg"]},
                          AUTH_CONFIG + "[request_log]\nflush_interval_ms = 60000\n"
                          "batch_max = 100000\nstop_timeout_s = 1\n")
    data = tmp_path / "data"
    with SubprocessGateway(config, data) as gw:
        load = Load(connect(gw, clients_of), "fraud", "term", threads=4, limit=400).start()
        load.wait_for(400)
        load.stop()
        assert gw.stop() == 0
    assert load.failures == []
    # Written by the stop itself: the database holds all of them before any restart.
    database = Database(make_engine(f"sqlite:///{data / 'gateway.db'}"))
    try:
        stored = [r.request_id for r in RequestStore(database).query_requests("fraud")]
    finally:
        database.close()
    assert sorted(stored) == sorted(load.received)
    # Then with the database locked at SIGTERM: the records stay in the journal (stop gives
    # up on the database after stop_timeout_s) and the next start replays them.
    gw = SubprocessGateway(config, data).start()
    try:
        with write_locked(f"sqlite:///{data / 'gateway.db'}"):
            load2 = Load(connect(gw, clients_of), "fraud", "locked", threads=4,
                         limit=300).start()
            load2.wait_for(300)
            load2.stop()
            assert gw.stop() == 0
    finally:
        gw.stop()
    assert load2.failures == []
    with SubprocessGateway(config, data) as restarted:
        c = connect(restarted, clients_of)
        wait_until(lambda: replayed(restarted), timeout=60)
        records = c.query("fraud", omit_payload=True)
    request_ids = sorted(r.request_id for r in records)
    assert request_ids == sorted([*load.received, *load2.received])
