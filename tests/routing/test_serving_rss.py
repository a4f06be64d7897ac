"""The memory cap of hot swaps: 200 load → swap → unload cycles of a small model on a
subprocess gateway grow its RSS by less than 50 MB after warm-up — and the same
measurement does catch a process that leaks (the control)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from gateway.pb import admin_pb2 as apb
from gateway.pb import grpc_service_pb2_grpc as ipb_grpc
from tests.admin.helpers import Admin
from tests.routing.serving_support import AUTH, features, gather_model, infer_request
from tests.support.subprocess_gateway import SubprocessGateway

CYCLES = 200
WARMUP_CYCLES = 20
CAP_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class Growth:
    baseline: int
    final: int

    @property
    def grown(self) -> int:
        return self.final - self.baseline


def rss_growth(pid: int, cycle: Callable[[int], None], *, cycles: int = CYCLES,
               warmup: int = WARMUP_CYCLES) -> Growth:
    """Run ``cycle(i)`` ``cycles`` times; RSS of ``pid`` after the first ``warmup`` ones vs
    after the last one."""
    process = psutil.Process(pid)
    for i in range(warmup):
        cycle(i)
    baseline = process.memory_info().rss
    for i in range(warmup, cycles):
        cycle(i)
    return Growth(baseline, process.memory_info().rss)


def tiny_version(i: int) -> bytes:
    """The same small graph with different initializer values: a distinct version each."""
    share = 0.5 + (i % 4000) * 1e-4
    return gather_model(table=(share, 1.0 - share))


def test_200_load_swap_unload_cycles_stay_under_the_rss_cap(tmp_path: Path) -> None:
    seed = tmp_path / "tiny.onnx"
    seed.write_bytes(tiny_version(0))
    config = tmp_path / "gateway.toml"
    config.write_text(f'{AUTH}\n[models.tiny]\nartifact = "{seed}"\nwarmup_iterations = 2\n')
    with SubprocessGateway(config, tmp_path / "data", "--log-level", "WARNING") as served, \
            grpc.insecure_channel(served.admin_address) as admin_channel, \
            grpc.insecure_channel(served.grpc_address) as channel:
        assert served.process is not None
        admin = Admin(admin_channel)
        stub = ipb_grpc.GRPCInferenceServiceStub(channel)
        previous = [1]

        def cycle(i: int) -> None:
            version = admin.register("tiny", tiny_version(i + 1), chunk=64 * 1024).version.version
            admin.call("LoadVersion", apb.LoadVersionRequest(model="tiny", version=version))
            admin.promote("tiny", version)
            admin.call("UnloadVersion", apb.UnloadVersionRequest(model="tiny",
                                                                 version=previous[0]))
            previous[0] = version
            for n in range(3):
                answer = stub.ModelInfer(infer_request("tiny", f"{i}-{n}", features(n)),
                                         timeout=30)
                assert answer.model_version == str(version)

        growth = rss_growth(served.process.pid, cycle)
        state = admin.model("tiny")
        loaded = [load.version for load in state.loads
                  if load.state == apb.LOAD_STATE_LOADED]
        assert loaded == [previous[0]] and state.served_version == previous[0]
    assert growth.grown < CAP_BYTES, (
        f"RSS grew {growth.grown / 2**20:.1f} MB over {CYCLES - WARMUP_CYCLES} cycles "
        f"({growth.baseline / 2**20:.0f} → {growth.final / 2**20:.0f} MB)")


LEAKER = """
import sys
import numpy as np
kept = []
for line in sys.stdin:
    kept.append(np.ones(512 * 1024 // 8))  # 0.5 MB per cycle, never released
    kept[-1][::512] = 2.0
    print("ok", flush=True)
"""


def test_the_rss_check_catches_a_leak() -> None:
    """The control: a process keeping 0.5 MB per cycle fails the same check."""
    child = subprocess.Popen([sys.executable, "-c", LEAKER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        def cycle(i: int) -> None:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(f"{i}\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "ok"

        growth = rss_growth(child.pid, cycle)
    finally:
        child.stdin.close()
        child.wait(30)
    assert growth.grown >= CAP_BYTES, f"the leak grew RSS by only {growth.grown / 2**20:.1f} MB"
