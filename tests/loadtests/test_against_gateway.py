"""One short real run of the harness against a subprocess gateway (the product, end to end).

The gateway runs as its own process (``gateway serve ... --port-file``) and the
harness as ``python -m loadtests``: two separate processes talking gRPC on loopback,
exactly as a user would run them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

GATEWAY = Path(sys.executable).with_name("gateway")


def _fraud_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 20)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    onx = convert_sklearn(
        LogisticRegression().fit(x, y),
        initial_types=[("input", FloatTensorType([None, 20]))],
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path.write_bytes(onx.SerializeToString())


@pytest.fixture
def gateway(tmp_path: Path):
    artifact = tmp_path / "fraud.onnx"
    _fraud_model(artifact)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[models.fraud]\nartifact = "{artifact}"\n')
    port_file = tmp_path / "ports.json"
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen(
        [
            str(GATEWAY),
            "serve",
            "--config",
            str(config),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--admin-port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            "--port-file",
            str(port_file),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        ports = None
        while ports is None:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "gateway did not write its port file in 60 s"
            try:
                ports = json.loads(port_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
        yield f"127.0.0.1:{ports['grpc']}"
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_short_run_against_the_gateway_counts_every_request_and_its_version(
    gateway: str, tmp_path: Path
) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests",
            "steady",
            "--target",
            gateway,
            "--model",
            "fraud",
            "--concurrency",
            "4",
            "--max-requests",
            "500",
            "--duration",
            "30",
            "--warmup",
            "0",
            "--no-progress",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["workload"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 20]}]
    run = doc["runs"][0]
    assert run["stopped_by"] == "count"
    assert run["requests"]["sent"] == 500
    assert run["requests"]["ok"] == 500
    assert run["errors_by_code"] == {}
    assert {v: row["count"] for v, row in run["versions"].items()} == {"1": 500}
    assert sum(w["ok"] for w in run["windows"]) == 500
