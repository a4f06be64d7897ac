"""Child process of the kill -9 test: logs records at a steady rate until killed.

    python -m tests.request_log.kill9_child JOURNAL_DIR DATABASE_URL FLUSH_INTERVAL_S

Prints ``READY`` once started, then one line ``<record id> <time.monotonic()>`` for every
record, written after ``log()`` returned (CLOCK_MONOTONIC is shared by every process).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from gateway.request_log import RequestLog, RequestLogConfig, RequestRecord
from gateway.types import InferInput, InferOutput
from lifecycle.db import Database, make_engine
from lifecycle.request_store import RequestStore

RATE_PER_S = 2000


def main() -> None:
    journal_dir, url, flush_interval = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    store = RequestStore(Database(make_engine(url)))
    request_log = RequestLog(
        RequestLogConfig(journal_dir=journal_dir, flush_interval_s=flush_interval), store,
        CollectorRegistry(),
    )
    request_log.start()
    features = np.arange(4, dtype=np.float32).reshape(1, 4)
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    started = time.monotonic()
    i = 0
    while True:
        record = RequestRecord(
            model="m", version=1, request_id=f"q{i}",
            inputs=[InferInput("features", "FP32", features)],
            outputs=[InferOutput("scores", "FP32", features[:, :2])],
        )
        request_log.log(record)
        out.write(f"{record.record_id} {time.monotonic()!r}\n")
        out.flush()
        i += 1
        # A steady rate: sleep until this record's slot.
        delay = started + i / RATE_PER_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)


if __name__ == "__main__":
    main()
