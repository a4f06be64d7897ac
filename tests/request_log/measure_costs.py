"""Measure the request log's per-record costs (not a test; run it by hand).

    .venv/bin/python -m tests.request_log.measure_costs [N]

Prints the serving-side cost of ``log()`` (median and p99 of single calls, record
construction excluded, measured while the writer threads run) and the writer's CPU per
record (journal encode+write+fsync and SQLite insert, both threads together), for a
16-float input and a 2-float output per record.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from gateway.request_log import RequestLog, RequestLogConfig, RequestRecord
from gateway.types import InferInput, InferOutput
from lifecycle.db import Database, make_engine, migrate
from lifecycle.request_store import RequestStore


def main(n: int) -> None:
    root = Path(tempfile.mkdtemp())
    engine = make_engine(f"sqlite:///{root / 'gateway.db'}")
    migrate(engine)
    store = RequestStore(Database(engine))
    request_log = RequestLog(
        RequestLogConfig(journal_dir=root / "journal", queue_max=n + 1), store,
        CollectorRegistry(),
    )
    request_log.start()
    inputs = [InferInput("features", "FP32", np.random.rand(1, 16).astype(np.float32))]
    outputs = [InferOutput("probabilities", "FP32", np.random.rand(1, 2).astype(np.float32))]
    records = [
        RequestRecord(model="m", version=1, request_id=f"r{i}", inputs=inputs, outputs=outputs,
                      latency_us=100)
        for i in range(n)
    ]
    samples = []
    clock = time.perf_counter_ns
    cpu0, main0 = time.process_time(), time.thread_time()
    for record in records:
        t0 = clock()
        request_log.log(record)
        samples.append(clock() - t0)
        if len(samples) % 200 == 0:
            time.sleep(0.002)  # a steady rate, roughly 50-100k/s, not one burst
    main_cpu = time.thread_time() - main0
    assert request_log.flush(120)
    writer_cpu = (time.process_time() - cpu0) - main_cpu
    samples.sort()
    print(f"log(): median {statistics.median(samples) / 1000:.2f} us, "
          f"p99 {samples[int(len(samples) * 0.99)] / 1000:.2f} us, "
          f"max {samples[-1] / 1000:.1f} us")
    print(f"writer CPU per record: {writer_cpu / n * 1e6:.1f} us "
          f"({store.count('m')} rows for {n} records)")
    request_log.stop(10)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
