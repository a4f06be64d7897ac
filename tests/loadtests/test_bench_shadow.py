"""The shadow benchmark's servers: both configurations start side by side from the
anchors' model, each with the policy it is measured under (perf_analyzer itself is not
part of the test suite)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc
from loadtests.bench import stop_group
from loadtests.bench_profiles import TOKEN
from loadtests.bench_shadow import PAIR, start
from tests import onnx_models

pytestmark = pytest.mark.slow


def test_both_configurations_serve_side_by_side_with_their_policies(tmp_path: Path) -> None:
    anchors = tmp_path / "anchors"
    (anchors / "models").mkdir(parents=True)
    (anchors / "models" / "logreg.onnx").write_bytes(
        onnx_models.logreg_like_model(n_features=20))
    sitting = tmp_path / "sitting"
    sitting.mkdir()
    servers = {}
    try:
        for name in PAIR:
            servers[name] = start(name, "logreg", sitting, anchors)
        policies = {}
        for name in servers:
            ports = json.loads((sitting / f"{name}-ports.json").read_text())
            with grpc.insecure_channel(f"127.0.0.1:{ports['admin']}") as channel:
                traffic = admin_pb2_grpc.AdminServiceStub(channel).GetTrafficPolicy(
                    apb.GetTrafficPolicyRequest(model="logreg"),
                    metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
            policies[name] = traffic
        full, shadow = (policies[n] for n in PAIR)
        assert sorted((a.version, a.weight) for a in full.policy.arms) == [(1, 50), (2, 50)]
        assert not full.policy.shadows
        assert [(a.version, a.weight) for a in shadow.policy.arms] == [(1, 100)]
        assert [(s.version, s.fraction) for s in shadow.policy.shadows] == [(2, 0.2)]
    finally:
        for proc, _ in servers.values():
            stop_group(proc)
