"""How much does *any* CPU-bound neighbour raise serving p99 on this machine?

The ``retrain`` scenario finds serving p99 while a model trains 3–6 × the steady p99, and
neither a lower CPU share nor ``SCHED_IDLE`` for the trainer brought that down. This probe
takes the lifecycle out of the question: the gateway serves the demo model at an open-loop
rate of half its measured capacity (as the scenario does) while a plain numpy burner — a
256×256 float64 matrix product in a loop, the kind of work an MLP fit does — runs beside
it, and compares p99 with the same run without the burner (alternating, ``--rounds``):

    none        no neighbour
    nice10      the burner at nice 10 (the trainer's default priority), all the time
    duty50      the same, stopped with SIGSTOP for half of every 100 ms (what
                ``[lifecycle] train_cpu_share = 0.5`` does to the trainer)
    idle        the burner under SCHED_IDLE (runs only on otherwise idle CPU)

    .venv/bin/python scripts/interference_probe.py --artifact fraud.onnx

If a burner under ``SCHED_IDLE`` still multiplies p99, the cost is contention for the
hardware the two vCPUs share, not CPU time the scheduler could give back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.bench import stop_group, wait_port_file  # noqa: E402

BURNER = ("import os\n"
          "os.environ['OPENBLAS_NUM_THREADS'] = '1'\n"
          "import numpy as np\n"
          "a = np.random.default_rng(0).random((256, 256))\n"
          "while True:\n    a = np.tanh(a @ a / 256.0)\n")
MODES = ("none", "nice10", "duty50", "idle")


def start_gateway(artifact: Path, root: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    config = root / "gateway.toml"
    config.write_text(f'[models.fraud]\nartifact = "{artifact.resolve()}"\n')
    port_file = root / "ports.json"
    gateway = Path(sys.executable).parent / "gateway"
    proc = subprocess.Popen([str(gateway), "serve", "--config", str(config), "--grpc-port", "0",
                             "--http-port", "0", "--admin-port", "0", "--data-dir",
                             str(root / "data"), "--port-file", str(port_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc, wait_port_file(port_file, proc, 120)


def harness(target: str, *args: str, output: Path) -> dict[str, Any]:
    subprocess.run([sys.executable, "-m", "loadtests", "steady", "--target", target,
                    "--model", "fraud", *args, "--output", str(output)],
                   check=True, capture_output=True, timeout=300)
    return dict(json.loads(output.read_text()))


def start_burner(mode: str) -> tuple[subprocess.Popen[bytes] | None, threading.Event]:
    stop = threading.Event()
    if mode == "none":
        return None, stop
    argv = [sys.executable, "-c", BURNER]
    if mode == "idle":
        argv = ["chrt", "--idle", "0", *argv]
    proc = subprocess.Popen(argv, preexec_fn=lambda: os.nice(10))
    if mode == "duty50":
        def duty() -> None:
            while not stop.wait(0.05):
                os.kill(proc.pid, signal.SIGSTOP)
                stop.wait(0.05)
                os.kill(proc.pid, signal.SIGCONT)
        threading.Thread(target=duty, daemon=True).start()
    return proc, stop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True, help="the demo model's ONNX")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--load-fraction", type=float, default=0.5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interference-") as tmp:
        root = Path(tmp)
        gateway, ports = start_gateway(args.artifact, root)
        target = f"127.0.0.1:{ports['grpc']}"
        try:
            capacity = harness(target, "--concurrency", "8", "--duration", "8",
                               "--warmup", "2", output=root / "capacity.json")
            measured = float(capacity["runs"][0]["throughput_rps"])
            rate = measured * args.load_fraction
            print(f"capacity {measured:.0f}/s, rate {rate:.0f}/s", flush=True)
            results: dict[str, list[float]] = {m: [] for m in MODES}
            for rnd in range(args.rounds):
                for mode in MODES:
                    burner, stop = start_burner(mode)
                    try:
                        run = harness(target, "--rate", f"{rate:.0f}", "--duration",
                                      str(args.duration), "--warmup", "2",
                                      output=root / f"{mode}-{rnd}.json")
                    finally:
                        stop.set()
                        if burner is not None:
                            os.kill(burner.pid, signal.SIGCONT)
                            burner.kill()
                            burner.wait()
                    measured_run = run["runs"][0]
                    p99 = float(measured_run["latency_us"]["p99"]) / 1000
                    results[mode].append(p99)
                    print(f"round {rnd} {mode:7s} p99 {p99:.2f} ms "
                          f"errors {measured_run['requests']['errors']}", flush=True)
            base = sorted(results["none"])[len(results["none"]) // 2]
            summary = {m: {"p99_ms": v, "x_none": round(sorted(v)[len(v) // 2] / base, 2)}
                       for m, v in results.items()}
            print(json.dumps(summary, indent=1))
            if args.output:
                args.output.write_text(json.dumps({"rate": rate, "summary": summary}, indent=2))
        finally:
            stop_group(gateway)
    return 0


if __name__ == "__main__":
    sys.exit(main())
