"""Two gateways on one database (replicas, or workers of one machine): a promotion and a
rollback made through one are followed by the other within ``policy_sync_s`` — loaded,
warmed and swapped — without moving the alias again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.pb import grpc_service_pb2 as ipb
from gateway.pb import grpc_service_pb2_grpc as ipb_grpc
from tests import onnx_models
from tests.admin.helpers import Admin
from tests.conftest import write_config
from tests.routing.serving_support import AUTH, features
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

MODEL = "fraud"


def served_version(gateway: InProcessGateway, model: str = MODEL) -> str:
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        request = ipb.ModelInferRequest(model_name=model)
        x = features(1)
        request.inputs.add(name="features", datatype="FP32", shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
        return ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10
                                                                      ).model_version


def wait_until_served(gateway: InProcessGateway, version: str, timeout_s: float) -> None:
    wait_until(lambda: served_version(gateway) == version, timeout_s,
               f"version {version} served")


@pytest.fixture
def replicas(tmp_path: Path, model_files: dict[str, Path]
             ) -> Iterator[tuple[InProcessGateway, InProcessGateway]]:
    data = tmp_path / "shared"
    started: list[InProcessGateway] = []
    for name in ("a", "b"):
        config = write_config(tmp_path / f"{name}.toml", {MODEL: model_files["logreg"]},
                              AUTH + "[traffic]\npolicy_sync_s = 0.2\n")
        started.append(InProcessGateway.start_from(config, data))
    yield started[0], started[1]
    for gateway in started:
        gateway.stop()


def test_a_promotion_and_a_rollback_elsewhere_are_followed(
        replicas: tuple[InProcessGateway, InProcessGateway]) -> None:
    a, b = replicas
    with grpc.insecure_channel(a.admin_address) as channel:
        admin = Admin(channel)
        version = admin.register(MODEL, onnx_models.logreg_like_model(seed=7)).version.version
        assert served_version(b) == "1"
        admin.promote(MODEL, version)
        assert served_version(a) == str(version)
        wait_until_served(b, str(version), timeout_s=15)
        assert b.app.manager is not None
        state = b.app.manager.serving_state(MODEL)
        assert state.production == version
        assert [v.version for v in state.versions] == [version]  # 1 drained and unloaded

        admin.rollback(MODEL)
        wait_until_served(b, "1", timeout_s=15)
        moves = [(e.action, e.version) for e in admin.events(MODEL, limit=100)
                 if e.action in ("alias.set", "alias.rollback") and e.version != 1
                 or e.action == "alias.rollback"]
    assert sorted(moves) == [("alias.rollback", 1), ("alias.set", version)]  # b moved none


def test_a_model_created_and_promoted_elsewhere_is_served_too(
        replicas: tuple[InProcessGateway, InProcessGateway]) -> None:
    a, b = replicas
    with grpc.insecure_channel(a.admin_address) as channel:
        admin = Admin(channel)
        version = admin.register("newcomer", onnx_models.logreg_like_model(seed=9)
                                 ).version.version
        admin.promote("newcomer", version)
    assert served_version(a, "newcomer") == str(version)
    wait_until(lambda: _answers(b, "newcomer") == str(version), 15,
               "the other gateway serving the new model")
    assert b.app.manager is not None and b.app.manager.is_ready("newcomer")


def _answers(gateway: InProcessGateway, model: str) -> str | None:
    """The served version, or None while the model is unknown (NOT_FOUND) or known but its
    version still loading (UNAVAILABLE)."""
    try:
        return served_version(gateway, model)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), exc
        return None
