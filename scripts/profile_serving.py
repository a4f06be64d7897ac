"""Where one request's CPU goes in a running gateway: py-spy samples while perf_analyzer
loads it, folded into microseconds per request for each step of ours.

    .venv/bin/python scripts/profile_serving.py --profile gateway-full [--concurrency 8]

Starts ``gateway serve`` configured as a ``loadtests.bench_profiles`` profile (the
anchors' logreg, and for profiles with a second version the A/B/shadow setup through the
CLI), runs perf_analyzer for ``--seconds`` and samples the gateway meanwhile with
``py-spy record --gil --nonblocking`` (only the thread holding the GIL: Python time).
A step's µs per request = its samples / sampling rate / requests served in the window;
"everything else" is the GIL time outside the listed steps (grpc.aio's Python/Cython
glue, asyncio). Native work outside the GIL (onnxruntime's own threads, SQLite's) is not
in these figures; the process CPU per request (from /proc) is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtests.bench import stop_group, wait_port_file  # noqa: E402
from loadtests.bench_probe import group_cpu_seconds  # noqa: E402
from loadtests.bench_profiles import (  # noqa: E402
    PROFILES,
    TOKEN,
    gateway_config,
    second_version,
    setup_commands,
)

# (label, function names whose inclusive samples make the step); first match wins, so a
# stack is counted once, under the innermost listed step.
STEPS = (
    ("onnxruntime session.run", ("OnnxModel.run",)),
    ("request log: writer threads (encode, journal, insert)",
     ("RequestLog._journal_loop", "RequestLog._db_loop")),
    ("request log: log() on the serving path", ("RequestLog.log",)),
    ("shadow copies", ("ShadowQueue", "Shadow", "_mirror", "ShadowRunner")),
    ("decode the request", ("decode_request",)),
    ("encode the response", ("encode_response",)),
    ("route (policy, split, sticky hash)", ("ModelManager.route",)),
    ("data plane: the rest (validate, feeds, stats, metrics, record)", ("DataPlane.infer",)),
    ("servicer: the rest (metadata, ids, errors)", ("InferenceServicer.ModelInfer",)),
)


def classify(frames: list[str]) -> str:
    names = [f.split(" (")[0] for f in frames]
    for label, keys in STEPS:
        if any(any(k in n for k in keys) for n in names):
            return label
    return "everything else (grpc.aio, asyncio, other threads)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gateway-full", choices=sorted(PROFILES))
    parser.add_argument("--model", default="logreg")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--anchors-dir", type=Path, default=Path("/tmp/anchors"))
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    work = Path(tempfile.mkdtemp(prefix="profile-"))
    config = work / "gateway.toml"
    config.write_text(gateway_config(args.anchors_dir / "models", [args.model], profile))
    ports = work / "ports.json"
    gateway = str(REPO / ".venv" / "bin" / "gateway")
    argv = [gateway, "serve", "--config", str(config), "--grpc-port", "0", "--http-port", "0",
            "--admin-port", "0", "--data-dir", str(work / "data"), "--port-file", str(ports),
            "--log-level", "WARNING"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        bound = wait_port_file(ports, proc, 120)
        target = f"127.0.0.1:{bound['grpc']}"
        v2 = second_version(args.anchors_dir / "models" / f"{args.model}.onnx",
                            work / "v2.onnx")
        for cli in setup_commands(profile, args.model, v2):
            subprocess.run([gateway, *cli, "--target", f"127.0.0.1:{bound['admin']}",
                            "--token", TOKEN], check=True, capture_output=True, timeout=120)
        pa = [str(args.anchors_dir / "bin" / "perf_analyzer"), "-i", "grpc", "-u", target,
              "-m", args.model, "--shape", "input:1,20", "--concurrency-range",
              f"{args.concurrency}:{args.concurrency}", "-p", "5000", "-r", "4", "-s", "100",
              "-f", str(work / "pa.csv")]
        load = subprocess.Popen(pa, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)  # perf_analyzer's own warm-up; the sample window starts after it
        raw = work / "spy.txt"
        cpu0, t0 = group_cpu_seconds(proc.pid), time.monotonic()
        subprocess.run([str(REPO / ".venv" / "bin" / "py-spy"), "record", "--gil",
                        "--nonblocking", "-r", str(args.rate), "-d", str(args.seconds),
                        "-f", "raw", "-o", str(raw), "-p", str(proc.pid)],
                       check=True, capture_output=True, timeout=args.seconds + 60)
        wall = time.monotonic() - t0
        cpu = group_cpu_seconds(proc.pid) - cpu0
        load.wait(timeout=600)
        rows = (work / "pa.csv").read_text().splitlines()
        throughput = float(dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
                           ["Inferences/Second"])
    finally:
        stop_group(proc)
    requests = throughput * wall
    steps: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        steps[classify(stack.split(";"))] += int(count)
    per_request = {k: v / args.rate / requests * 1e6 for k, v in steps.items()}
    print(f"profile {args.profile}, {args.model}, c={args.concurrency}: {throughput:,.0f} "
          f"infer/s; process CPU {cpu / requests * 1e6:.0f} µs per request "
          f"({cpu / wall:.2f} cores); GIL-held Python time "
          f"{sum(per_request.values()):.0f} µs per request")
    print("| step | µs per request (GIL held) |\n|---|---|")
    for label, us in sorted(per_request.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {us:.1f} |")
    (work / "profile.json").write_text(json.dumps(
        {"throughput": throughput, "cpu_us": cpu / requests * 1e6, "steps": per_request}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
