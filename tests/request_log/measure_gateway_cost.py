"""Measure what the request log adds to one inference on the serving path (not a test; run
it by hand).

    .venv/bin/python -m tests.request_log.measure_gateway_cost [N]

Starts a real in-process gateway serving the 20-feature logistic regression (inline: it
runs on the event loop), then calls ``DataPlane.infer`` on the gateway's loop N times per
round with logging off (a data plane without a request log) and on (the app's request
log, 100% sampled, payload captured), alternating rounds. Prints the per-call median and
mean of each and their difference: the hot-path cost. The writer threads run meanwhile, so
the "on" figures include their GIL contention; their own CPU per record is reported too.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gateway.dataplane import DataPlane
from gateway.types import InferInput, InferRequest
from tests.onnx_models import logreg_like_model
from tests.support.inprocess import InProcessGateway

ROUNDS = 6


async def timed(dataplane: DataPlane, request: InferRequest, n: int) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        started = clock()
        await dataplane.infer(request, started)
        samples.append(clock() - started)
        if i % 200 == 199:
            # A steady rate rather than one burst: let the writer keep up.
            await asyncio.sleep(0.002)
    return samples


def main(n: int) -> None:
    root = Path(tempfile.mkdtemp())
    (root / "m.onnx").write_bytes(logreg_like_model())
    (root / "g.toml").write_text(f'[models.m]\nartifact = "{root / "m.onnx"}"\n'
                                 "[request_log]\nqueue_max = 1000000\n")
    gateway = InProcessGateway.start_from(root / "g.toml", root / "data")
    app = gateway.app
    assert app.manager is not None and app.request_log is not None
    pool = ThreadPoolExecutor(1)
    planes = {
        "off": DataPlane(app.manager, pool, app.metrics),
        "on": DataPlane(app.manager, pool, app.metrics, request_log=app.request_log),
    }
    x = np.random.default_rng(0).normal(size=(1, 20)).astype(np.float32)
    request = InferRequest(model="m", inputs=[InferInput("features", "FP32", x)], id="r")
    samples: dict[str, list[int]] = {"off": [], "on": []}
    gateway.call(timed(planes["on"], request, n // 4))  # warm up both paths
    gateway.call(timed(planes["off"], request, n // 4))
    assert app.request_log.flush(120)
    cpu_on = 0.0
    for _ in range(ROUNDS):
        for mode in ("off", "on"):
            cpu0 = time.process_time()
            samples[mode] += gateway.call(timed(planes[mode], request, n), 600)
            if mode == "on":
                assert app.request_log.flush(120)
                cpu_on += time.process_time() - cpu0
            else:
                cpu_off = time.process_time() - cpu0
    gateway.stop()
    pool.shutdown()
    med = {m: statistics.median(s) / 1000 for m, s in samples.items()}
    mean = {m: statistics.fmean(s) / 1000 for m, s in samples.items()}
    for mode in ("off", "on"):
        print(f"logging {mode:3}: median {med[mode]:6.2f} us, mean {mean[mode]:6.2f} us per "
              f"infer() ({len(samples[mode])} calls)")
    print(f"added on the serving path: median {med['on'] - med['off']:+.2f} us, "
          f"mean {mean['on'] - mean['off']:+.2f} us")
    per_round_off = cpu_off / n * 1e6
    per_round_on = cpu_on / ROUNDS / n * 1e6
    print(f"process CPU per inference incl. the writer threads: off {per_round_off:.1f} us, "
          f"on {per_round_on:.1f} us (+{per_round_on - per_round_off:.1f} us)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
