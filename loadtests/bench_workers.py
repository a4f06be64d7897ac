"""``python -m loadtests.bench_workers``: ``gateway serve --workers N`` against one process.

For each worker count (``--workers 1,2``), in one sitting: a fresh gateway configured as a
``make bench`` profile (``--profile gateway``: the serving core; ``gateway-full``: an A/B
split over two versions and the request log at 100 % with payloads), serving the anchors'
``logreg.onnx``, measured with perf_analyzer at ``--concurrency`` (32) exactly as ``make
bench`` runs it, after a warm-up. Printed and written to
``$ANCHORS_DIR/results/workers-<time>/workers.json``: throughput, p50/p99, the server's
CPU (the whole process group: supervisor and workers) and how the requests split over
the workers (``gateway_worker_requests_total``).

``SO_REUSEPORT`` spreads *connections* over the workers, and perf_analyzer's gRPC client
shares one channel (one connection) between up to 6 concurrent contexts by default: this
script sets ``TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1`` so each of the 32 contexts
has a connection of its own. Only loopback; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtests import wire
from loadtests.bench import stop_group, wait_port_file
from loadtests.bench_probe import ForeignLoad, group_cpu_seconds, perf_analyzer
from loadtests.bench_profiles import PROFILES, TOKEN, gateway_config, second_version, setup_commands
from loadtests.events import gateway_argv

MODEL = "logreg"
_WORKER_SAMPLE = re.compile(r'^gateway_worker_requests_total\{worker="(\d+)"\} (\S+)$', re.M)


def _worker_split(http_port: int) -> dict[str, float]:
    """Requests answered per worker so far (empty for a single process)."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as page:
        text = page.read().decode()
    return {w: float(n) for w, n in _WORKER_SAMPLE.findall(text)}


def measure(workers: int, profile_name: str, sitting: Path, anchors: Path,
            concurrency: int, interval_ms: int, rep: int) -> dict[str, Any]:
    profile = PROFILES[profile_name]
    name = f"w{workers}-r{rep}"
    config = sitting / f"{name}.toml"
    config.write_text(gateway_config(anchors / "models", [MODEL], profile))
    port_file = sitting / f"{name}-ports.json"
    argv = gateway_argv("serve", "--config", str(config), "--workers", str(workers),
                        "--grpc-port", "0", "--http-port", "0", "--admin-port", "0",
                        "--data-dir", str(sitting / f"{name}-data"),
                        "--port-file", str(port_file))
    print("$ " + " ".join(argv), flush=True)
    pa = anchors / "bin" / "perf_analyzer"
    with (sitting / f"{name}-server.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            ports = wait_port_file(port_file, proc, 180)
            target = f"127.0.0.1:{ports['grpc']}"
            wire.wait_model_ready(target, MODEL, timeout_s=120)
            connection = ["--target", f"127.0.0.1:{ports['admin']}", "--token", TOKEN]
            version_file = second_version(anchors / "models" / f"{MODEL}.onnx",
                                          sitting / f"{MODEL}-v2.onnx")
            for args in setup_commands(profile, MODEL, version_file):
                subprocess.run(gateway_argv(*args, *connection), check=True, timeout=120,
                               capture_output=True)
            perf_analyzer(pa, target, MODEL, 8, sitting / f"{name}_warmup", 1000)
            split0 = _worker_split(ports["http"])
            cpu0, t0 = group_cpu_seconds(proc.pid), time.monotonic()
            row = perf_analyzer(pa, target, MODEL, concurrency,
                                sitting / f"{name}_pa_c{concurrency}", interval_ms)
            wall = time.monotonic() - t0
            cores = (group_cpu_seconds(proc.pid) - cpu0) / wall
            split = {w: n - split0.get(w, 0.0) for w, n in _worker_split(ports["http"]).items()}
        finally:
            stop_group(proc)
    row.update(workers=workers, profile=profile_name, concurrency=concurrency, rep=rep,
               server_cores=round(cores, 3), worker_split=split)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_workers",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--profile", default="gateway", choices=sorted(PROFILES))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--reps", type=int, default=1, help="rounds over the worker counts")
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer -p")
    parser.add_argument("--share-count", type=int, default=1,
                        help="concurrent contexts per gRPC connection "
                             "(TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT, default 1)")
    parser.add_argument("--anchors-dir", type=Path,
                        default=Path(os.environ.get("ANCHORS_DIR", "/tmp/anchors")))
    args = parser.parse_args(argv)
    anchors = args.anchors_dir.resolve()
    if not (anchors / "bin" / "perf_analyzer").exists():
        print(f"no perf_analyzer in {anchors}/bin: bash ../shared/anchors/"
              f"install_perf_analyzer.sh {anchors}", file=sys.stderr)
        return 2
    # One connection per concurrent context (see the module docstring).
    os.environ["TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT"] = str(args.share_count)
    sitting = anchors / "results" / f"workers-{datetime.now():%Y%m%d-%H%M%S}"
    sitting.mkdir(parents=True, exist_ok=True)
    counts = [int(w) for w in args.workers.split(",") if w]
    foreign = ForeignLoad()
    rows = []
    for rep in range(args.reps):
        for workers in counts:
            row = measure(workers, args.profile, sitting, anchors, args.concurrency,
                          args.interval_ms, rep)
            rows.append(row)
            print(f"workers={workers} rep={rep}: {row.get('throughput', 0):.0f}/s "
                  f"p50={row.get('p50_us')} µs p99={row.get('p99_us')} µs "
                  f"server {row['server_cores']} cores, split {row['worker_split']} "
                  f"rc={row['rc']}", flush=True)
    result = {"profile": args.profile, "concurrency": args.concurrency, "rows": rows,
              "foreign_cores": round(foreign.cores(), 3),
              "env": f"TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT={args.share_count}"}
    best = {w: max((r.get("throughput", 0.0) for r in rows if r["workers"] == w), default=0.0)
            for w in counts}
    if len(counts) > 1 and best[counts[0]]:
        result["ratio"] = {f"{w}/{counts[0]}": round(best[w] / best[counts[0]], 3)
                           for w in counts[1:]}
        print(f"throughput ratio (best of each): {result['ratio']}; other load on the "
              f"machine: {result['foreign_cores']} cores")
    (sitting / "workers.json").write_text(json.dumps(result, indent=2))
    print(f"written: {sitting / 'workers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
