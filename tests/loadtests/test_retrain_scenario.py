"""The ``retrain`` scenario against the real product: it starts ``gateway serve``, seeds
labelled traffic through ``gateway feedback``, retrains through ``gateway retrain`` while
it measures, and reports p99 while training vs steady. Tiny sizes: the mechanics, not
the figures (those are in docs/benchmarks-retrain.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from loadtests.scenarios import builtin_registry
from loadtests.scenarios.retrain import gateway_config

pytestmark = pytest.mark.slow


def _model(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 20)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    onx = convert_sklearn(LogisticRegression().fit(x, y),
                          initial_types=[("input", FloatTensorType([None, 20]))],
                          options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())


def test_the_scenario_is_registered_and_its_config_reads_back(tmp_path: Path) -> None:
    assert "retrain" in builtin_registry().names()
    text = gateway_config("fraud", tmp_path / "m.onnx", "sklearn.neural_network.MLPClassifier",
                          {"hidden_layer_sizes": [64, 64], "max_iter": 5, "tol": 0.0}, 15)
    config = tomllib.loads(text)
    lifecycle = config["models"]["fraud"]["lifecycle"]
    assert lifecycle["params"] == {"hidden_layer_sizes": [64, 64], "max_iter": 5, "tol": 0.0}
    assert lifecycle["deploy"] == {"policy": "manual"}
    assert config["lifecycle"] == {"nice": 15, "train_cpu_share": 0.5}


def test_a_short_retrain_scenario_end_to_end(tmp_path: Path) -> None:
    artifact = tmp_path / "fraud.onnx"
    _model(artifact)
    output = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests", "retrain", "--artifact", str(artifact),
         "--seed-rows", "400", "--params", '{"hidden_layer_sizes": [64], "max_iter": 30}',
         "--capacity-duration", "2", "--duration", "6", "--warmup", "0.5", "--rounds", "1",
         "--work-dir", str(tmp_path / "work"), "--output", str(output), "--no-progress"],
        capture_output=True, text=True, timeout=300)
    summary = json.loads(output.read_text())["summary"]
    # The p99 verdict is a measurement (the benchmark's); here only its exit code is checked.
    assert done.returncode == (0 if summary["passed"] else 1), done.stderr[-3000:]
    assert summary["capacity_rps"] > 0
    assert summary["rate_rps"] == pytest.approx(summary["capacity_rps"] / 2, rel=0.01)
    assert all(errors == 0 for errors in summary["errors"].values())
    (only,) = summary["rounds"]
    assert (only["run"]["status"], only["run"]["outcome"]) == ("succeeded", "registered")
    assert set(only["run"]["steps"]) == {"snapshot", "train", "convert", "evaluate",
                                         "gates", "register", "deploy"}
    start, end = only["train_window_s"]
    assert 0 < start < end < 6 + 1
    assert summary["steady_p99_us"] > 0 and summary["steady_requests"] > 0
    assert "p99 ms" in done.stdout and "train step" in done.stdout
