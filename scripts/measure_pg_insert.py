"""Measure the request store's two PostgreSQL insert paths (not a test; run it by hand).

    .venv/bin/python scripts/measure_pg_insert.py [BATCH ...]

On a database of its own on the server of ``GATEWAY_TEST_POSTGRES_URL`` (created and
dropped; e.g. ``scripts/pg-test.sh -- …`` or ``source /tmp/pg-dev.env``), inserts batches
of the given sizes (default 10 50 100 500) through ``RequestStore`` both ways — the
pipelined ``executemany`` of one-row ``INSERT … ON CONFLICT DO NOTHING`` and the ``COPY``
into the session's staging table then ``INSERT … SELECT`` — alternating, about 5,000 rows
per measurement, and prints rows per second, milliseconds per batch, this process's CPU
per row (the gateway's writer thread) and the PostgreSQL server's CPU per row (all its
processes, from /proc: other users of the server count too). Rows carry 204 bytes of
tensors, as logreg's records do.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

from lifecycle.db import Database, make_engine, migrate
from lifecycle.request_records import RequestEntry
from lifecycle.request_store import RequestStore
from loadtests.bench_postgres import postgres_cpu_probe

ROWS = 5_000


def entries(n: int) -> list[RequestEntry]:
    now = time.time_ns() // 1000
    return [RequestEntry(record_id=uuid.uuid4().hex, request_id=str(i), model="logreg",
                         version=1, timestamp_us=now + i, latency_us=100, status="OK",
                         inputs=os.urandom(120), outputs=os.urandom(84)) for i in range(n)]


def main(batches: list[int]) -> None:
    admin_url = make_url(os.environ["GATEWAY_TEST_POSTGRES_URL"])
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"measure_pg_insert_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    server_cpu = postgres_cpu_probe(url)
    engine = make_engine(url)
    try:
        migrate(engine)
        store = RequestStore(Database(engine))
        # The two paths, whatever the batch size (the store picks by PG_COPY_MIN_ROWS).
        paths = {"executemany": False, "COPY": True}
        for copy in paths.values():
            store._write(entries(20), (), copy=copy)
        print(f"{'batch':>5}  {'path':<11}  {'rows/s':>7}  {'ms/batch':>8}  "
              f"{'client µs/row':>13}  {'server µs/row':>13}")
        for batch in batches:
            count = max(5, ROWS // batch)
            for rep in range(2):
                for label, copy in paths.items():
                    data = [entries(batch) for _ in range(count)]
                    s0 = server_cpu() if server_cpu else 0.0
                    w0, c0 = time.perf_counter(), time.process_time()
                    for rows in data:
                        store._write(rows, (), copy=copy)
                    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                    server = (f"{(server_cpu() - s0) / (count * batch) * 1e6:13.1f}"
                              if server_cpu else f"{'-':>13}")
                    if rep:  # the first round warms up
                        print(f"{batch:5d}  {label:<11}  {count * batch / wall:7.0f}  "
                              f"{wall / count * 1e3:8.2f}  {cpu / (count * batch) * 1e6:13.1f}  "
                              f"{server}")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10, 50, 100, 500])
