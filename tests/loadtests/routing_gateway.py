"""A subprocess gateway serving ``fraud`` with versions 1 (production) and 2, for the
routing scenarios' tests. Changes go through the ``gateway`` CLI as subprocesses: this
suite never imports the gateway's generated protobuf code (it clashes with the harness's)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import onnx_models
from tests.support.subprocess_gateway import SubprocessGateway

TOKEN = "ops-secret"
GATEWAY = Path(sys.executable).with_name("gateway")


@dataclass
class RoutingGateway:
    server: SubprocessGateway
    root: Path

    @property
    def grpc(self) -> str:
        return self.server.grpc_address

    @property
    def admin(self) -> str:
        return self.server.admin_address

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``gateway ARGS --target ADMIN --token TOKEN``; asserts it succeeded."""
        done = subprocess.run([str(GATEWAY), *args, "--target", self.admin, "--token", TOKEN],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def loadtest(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """``python -m loadtests ARGS --output …``; the JSON result."""
        out = self.root / "result.json"
        out.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-m", "loadtests", *args, "--no-progress",
                               "--output", str(out)], capture_output=True, text=True,
                              timeout=timeout)
        doc: dict[str, Any] = json.loads(out.read_text())
        # 1 when the scenario's own check failed (some tests expect that), else 0.
        expected = 1 if doc["summary"].get("passed") is False else 0
        assert done.returncode == expected, done.stdout + done.stderr
        return doc


@pytest.fixture
def routing_gateway(tmp_path: Path) -> Iterator[RoutingGateway]:
    v1, v2 = tmp_path / "v1.onnx", tmp_path / "v2.onnx"
    v1.write_bytes(onnx_models.logreg_like_model(seed=1))
    v2.write_bytes(onnx_models.logreg_like_model(seed=7))
    config = tmp_path / "gateway.toml"
    config.write_text(f'[auth.tokens.ops]\ntoken = "{TOKEN}"\nrole = "operator"\n\n'
                      f'[models.fraud]\nartifact = "{v1}"\n')
    with SubprocessGateway(config, tmp_path / "data", "--log-level", "WARNING") as server:
        gateway = RoutingGateway(server, tmp_path)
        gateway.cli("register", "fraud", str(v2))
        yield gateway
