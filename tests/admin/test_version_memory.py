"""Each loaded version reports the resident memory its load and warm-up added, over the
admin API and in ``gateway models show``. A fresh gateway process: in a process whose
allocator holds memory freed by earlier tests an RSS delta says little."""

from __future__ import annotations

from pathlib import Path

import grpc

from gateway.pb import admin_pb2 as apb
from loadtests.models import mlp_model
from tests.admin.cli_support import gateway_cli, ok
from tests.admin.helpers import Admin
from tests.conftest import write_config
from tests.routing.serving_support import AUTH
from tests.support.subprocess_gateway import SubprocessGateway

HIDDEN = (1024, 1024, 1024)  # ≈ 8 MiB of FP32 weights
WEIGHT_BYTES = 4 * (20 * 1024 + 1024 * 1024 * 2 + 1024 * 2)


def test_a_loaded_version_reports_the_memory_it_added(tmp_path: Path) -> None:
    artifact = tmp_path / "mlp.onnx"
    artifact.write_bytes(mlp_model(hidden=HIDDEN))
    config = write_config(tmp_path / "gateway.toml", {"mlp": artifact}, AUTH)
    gateway = SubprocessGateway(config, tmp_path / "data").start()
    try:
        with grpc.insecure_channel(gateway.admin_address) as channel:
            (load,) = Admin(channel).call("GetModel", apb.GetModelRequest(name="mlp")).loads
        assert load.state == apb.LOAD_STATE_LOADED
        # The session holds the weights (at least once); an RSS delta also counts
        # allocator slack and whatever else ran, so only the lower bound is firm.
        assert load.rss_bytes >= WEIGHT_BYTES // 2, load.rss_bytes
        shown = ok(gateway_cli(gateway.admin_address, "models", "show", "mlp"))
        assert "RSS" in shown and f"{load.rss_bytes / 2**20:.1f}MiB" in shown
    finally:
        gateway.stop()
