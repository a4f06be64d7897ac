"""``python -m loadtests.bench_shadow``: what mirroring 20 % of requests costs, in
alternating pairs.

``make bench`` measures each gateway configuration in turn, one after the other; on a
shared two-core machine minutes apart the same configuration varies by 5–15 %, more than
the effect sought. Here both configurations serve at the same time (an idle one costs
nothing), each ``gateway-full`` run (A/B over two versions, request log 100 % with
payloads) is followed at once by a ``gateway-shadow`` run (request log on, version 1
serves, 20 % mirrored to version 2), the order swapping every round, and the ratio is
taken per pair. Server CPU per request comes from the process group's CPU time.

Same model (the anchors' ``logreg.onnx`` or ``rf.onnx``), same perf_analyzer settings as
``make bench`` (``-p 3000 -r 6``, ``--shape input:1,20``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtests import wire
from loadtests.bench import stop_group, wait_port_file
from loadtests.bench_probe import ForeignLoad, group_cpu_seconds, perf_analyzer
from loadtests.bench_profiles import PROFILES, TOKEN, gateway_config, second_version, setup_commands
from loadtests.events import gateway_argv

PAIR = ("gateway-full", "gateway-shadow")


def start(profile_name: str, model: str, sitting: Path, anchors: Path
          ) -> tuple[subprocess.Popen[Any], str]:
    profile = PROFILES[profile_name]
    config = sitting / f"{profile_name}.toml"
    config.write_text(gateway_config(anchors / "models", [model], profile))
    port_file = sitting / f"{profile_name}-ports.json"
    argv = gateway_argv("serve", "--config", str(config), "--grpc-port", "0",
                        "--http-port", "0", "--admin-port", "0",
                        "--data-dir", str(sitting / f"{profile_name}-data"),
                        "--port-file", str(port_file))
    print("$ " + " ".join(argv), flush=True)
    log = (sitting / f"{profile_name}-server.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ports = wait_port_file(port_file, proc, 180)
    target = f"127.0.0.1:{ports['grpc']}"
    wire.wait_model_ready(target, model, timeout_s=120)
    connection = ["--target", f"127.0.0.1:{ports['admin']}", "--token", TOKEN]
    version_file = second_version(anchors / "models" / f"{model}.onnx",
                                  sitting / f"{model}-v2.onnx")
    for args in setup_commands(profile, model, version_file):
        print("$ gateway " + " ".join(args), flush=True)
        subprocess.run(gateway_argv(*args, *connection), check=True, timeout=120,
                       capture_output=True)
    return proc, target


def run_once(proc: subprocess.Popen[Any], target: str, model: str, c: int, prefix: Path,
             interval_ms: int) -> dict[str, Any]:
    cpu0, t0 = group_cpu_seconds(proc.pid), time.monotonic()
    row = perf_analyzer(Path(os.environ["PA_BIN"]), target, model, c, prefix, interval_ms)
    wall = time.monotonic() - t0
    cpu = group_cpu_seconds(proc.pid) - cpu0
    row["server_cores"] = round(cpu / wall, 3)
    throughput = float(row.get("throughput", 0.0))
    per_request = cpu / wall / throughput * 1e6 if throughput else None
    row["server_cpu_us_per_request"] = None if per_request is None else round(per_request, 1)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_shadow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="logreg", choices=("logreg", "rf"))
    parser.add_argument("--concurrency", default="8,32")
    parser.add_argument("--rounds", type=int, default=3, help="pairs per concurrency")
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer -p")
    parser.add_argument("--anchors-dir", type=Path,
                        default=Path(os.environ.get("ANCHORS_DIR", "/tmp/anchors")))
    args = parser.parse_args(argv)
    anchors = args.anchors_dir.resolve()
    pa = anchors / "bin" / "perf_analyzer"
    if not pa.exists():
        print(f"no perf_analyzer in {anchors}/bin: bash ../shared/anchors/"
              f"install_perf_analyzer.sh {anchors}", file=sys.stderr)
        return 2
    os.environ["PA_BIN"] = str(pa)
    sitting = anchors / "results" / f"shadow-{datetime.now():%Y%m%d-%H%M%S}"
    sitting.mkdir(parents=True, exist_ok=True)
    servers = {}
    try:
        for name in PAIR:
            servers[name] = start(name, args.model, sitting, anchors)
        for proc, target in servers.values():
            perf_analyzer(pa, target, args.model, 8, sitting / f"warmup-{proc.pid}", 1000)
        foreign = ForeignLoad()
        rows: list[dict[str, Any]] = []
        levels = [int(c) for c in args.concurrency.split(",") if c]
        for c in levels:
            for rnd in range(args.rounds):
                order = PAIR if rnd % 2 == 0 else PAIR[::-1]
                pair = {}
                for name in order:
                    proc, target = servers[name]
                    row = run_once(proc, target, args.model, c,
                                   sitting / f"{name}_c{c}_r{rnd}", args.interval_ms)
                    row.update(profile=name, concurrency=c, round=rnd)
                    rows.append(row)
                    pair[name] = row
                full, shadow = (float(pair[n].get("throughput", 0.0)) for n in PAIR)
                ratio = shadow / full if full else 0.0
                pair[PAIR[1]]["ratio_to_full"] = round(ratio, 3)
                print(f"c={c} round {rnd}: full {full:.0f}/s p50 {pair[PAIR[0]].get('p50_us')} µs "
                      f"({pair[PAIR[0]]['server_cpu_us_per_request']} µs CPU/req), shadow "
                      f"{shadow:.0f}/s p50 {pair[PAIR[1]].get('p50_us')} µs "
                      f"({pair[PAIR[1]]['server_cpu_us_per_request']} µs CPU/req) → {ratio:.3f}",
                      flush=True)
        summary = {}
        for c in levels:
            ratios = [r["ratio_to_full"] for r in rows
                      if r["profile"] == PAIR[1] and r["concurrency"] == c]
            p50s = {n: [r.get("p50_us") for r in rows
                        if r["profile"] == n and r["concurrency"] == c] for n in PAIR}
            summary[str(c)] = {"median_ratio": round(statistics.median(ratios), 3),
                               "ratios": ratios, "p50_us": p50s}
        result = {"model": args.model, "rows": rows, "summary": summary,
                  "foreign_cores": round(foreign.cores(), 3)}
        (sitting / "shadow.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(summary), f"other load: {result['foreign_cores']} cores")
        print(f"written: {sitting / 'shadow.json'}")
    finally:
        for proc, _ in servers.values():
            stop_group(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
