"""kill -9 while logging at a steady rate, then restart on the same journal and database.

Guarantee under test: only records not yet in an fsynced journal batch may be lost —
those logged within the flush interval (plus SLACK_S, for one batch's encode, write and
fsync and for scheduling on a busy machine) before the kill — and none is duplicated.
On SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.request_log import RequestLog, RequestLogConfig
from lifecycle.request_store import RequestStore
from loadtests.database_lock import write_locked
from tests.request_log.conftest import sample
from tests.support.waiting import wait_until

FLUSH_INTERVAL_S = 0.05
SLACK_S = 0.3
ROOT = Path(__file__).resolve().parents[2]


def test_kill_9_loses_only_the_last_flush_interval_and_duplicates_nothing(
    store: RequestStore, database_url: str, journal_dir: Path
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.request_log.kill9_child", str(journal_dir),
         database_url, str(FLUSH_INTERVAL_S)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(lines) > 400 or child.poll() is not None, timeout=30)
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        # Halfway, the database goes away: from then on the records live only in the
        # child's journal, so the restart must replay them from it.
        with write_locked(database_url):
            seen = len(lines)
            wait_until(lambda: len(lines) > seen + 400, timeout=30)
            killed_at = time.monotonic()
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader.join(timeout=10)
    logged = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == 2:  # the line being written at the kill may be cut
            logged[parts[0]] = float(parts[1])
    assert lines[0].strip() == "READY" and len(logged) > 800
    in_db_before = store.count("m")
    assert 0 < in_db_before < len(logged)
    # Replay everything the journal still holds, even what the checkpoint says is in
    # the database: the inserts must be idempotent.
    (journal_dir / "checkpoint").unlink(missing_ok=True)

    registry = CollectorRegistry()
    restarted = RequestLog(RequestLogConfig(journal_dir=journal_dir), store, registry)
    recovery = restarted.start()
    try:
        assert recovery.pending_frames > 0
        assert restarted.flush(30)
        wait_until(lambda: sample(registry, "gateway_request_log_replayed_total",
                                  kind="request") >= recovery.pending_frames)
    finally:
        assert restarted.stop(10)
    stored = [r.record_id for r in store.query_requests("m")]
    assert len(stored) == len(set(stored)) == store.count("m")
    assert set(stored) <= set(logged) | _unprinted_allowance(stored, logged)
    missing = {rid: t for rid, t in logged.items() if rid not in set(stored)}
    late = {rid: round(killed_at - t, 3) for rid, t in missing.items()
            if t < killed_at - FLUSH_INTERVAL_S - SLACK_S}
    assert not late, f"{len(late)} records lost although logged long before the kill: {late}"
    assert len(stored) > in_db_before


def _unprinted_allowance(stored: list[str], logged: dict[str, float]) -> set[str]:
    """A record whose log() returned just before the kill may be journaled without its line
    having been printed: at most one such id."""
    extra = set(stored) - set(logged)
    assert len(extra) <= 1, extra
    return extra
