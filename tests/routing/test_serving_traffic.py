"""Traffic policies on a real in-process gateway: split, sticky, pin, shadow, a change of
weights, a promotion ending an experiment — through the admin API and inference RPCs."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.pb import admin_pb2 as apb
from gateway.pb import grpc_service_pb2 as ipb
from gateway.pb import grpc_service_pb2_grpc as ipb_grpc
from tests import onnx_models
from tests.admin.helpers import OPERATOR_TOKEN, Admin
from tests.conftest import write_config
from tests.support.inprocess import InProcessGateway

MODEL = "fraud"
AUTH = f'[auth.tokens.ops]\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\n'


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    """``fraud`` with versions 1 (production, seeded) to 4 (registered, same signature)."""
    root = tmp_path_factory.mktemp("traffic")
    config = write_config(root / "gateway.toml", {MODEL: model_files["logreg"]}, AUTH)
    server = InProcessGateway.start_from(config, root / "data")
    with grpc.insecure_channel(server.admin_address) as channel:
        admin = Admin(channel)
        for seed in (7, 11, 13):
            admin.register(MODEL, onnx_models.logreg_like_model(seed=seed))
    yield server
    server.stop()


@pytest.fixture
def admin(gateway: InProcessGateway) -> Iterator[Admin]:
    with grpc.insecure_channel(gateway.admin_address) as channel:
        yield Admin(channel)
        admin = Admin(channel)
        admin.call("ClearTrafficPolicy", apb.ClearTrafficPolicyRequest(model=MODEL))


@pytest.fixture
def stub(gateway: InProcessGateway) -> Iterator[ipb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        yield ipb_grpc.GRPCInferenceServiceStub(channel)


X = np.random.default_rng(0).normal(size=(1, 20)).astype(np.float32)


def request(i: int = 0, *, version: str = "", key: str | None = None) -> ipb.ModelInferRequest:
    message = ipb.ModelInferRequest(model_name=MODEL, model_version=version, id=f"r{i}")
    message.inputs.add(name="features", datatype="FP32", shape=X.shape)
    message.raw_input_contents.append(X.tobytes())
    if key is not None:
        message.parameters["routing_key"].string_param = key
    return message


def stream(stub: ipb_grpc.GRPCInferenceServiceStub,
           requests: list[ipb.ModelInferRequest]) -> list[ipb.ModelInferResponse]:
    out = []
    for item in stub.ModelStreamInfer(iter(requests), timeout=120):
        assert not item.error_message, item.error_message
        out.append(item.infer_response)
    return out


def set_split(admin: Admin, weights: dict[int, float], *, sticky: bool = False,
              shadows: dict[int, float] | None = None) -> apb.TrafficPolicyStatus:
    return admin.call("SetTrafficPolicy", apb.SetTrafficPolicyRequest(
        model=MODEL, sticky=sticky,
        arms=[apb.TrafficArm(version=v, weight=w) for v, w in weights.items()],
        shadows=[apb.TrafficShadow(version=v, fraction=f)
                 for v, f in (shadows or {}).items()]))


def test_split_90_10_within_one_point_and_responses_carry_arm_and_experiment(
        admin: Admin, stub: ipb_grpc.GRPCInferenceServiceStub) -> None:
    status = set_split(admin, {1: 90, 2: 10})
    experiment = status.policy.experiment_id
    assert experiment and sorted(status.serving_set) == [1, 2]
    responses = stream(stub, [request(i) for i in range(20_000)])
    versions = Counter(r.model_version for r in responses)
    assert set(versions) == {"1", "2"}
    assert abs(versions["2"] / 20_000 - 0.10) <= 0.01
    for r in responses[:50]:
        assert r.parameters["experiment_id"].string_param == experiment
        assert r.parameters["routing_arm"].string_param == r.model_version
    shown = admin.call("GetTrafficPolicy", apb.GetTrafficPolicyRequest(model=MODEL))
    arms = {a.version: a for a in shown.arms}
    assert arms[1].requests + arms[2].requests == 20_000
    assert arms[2].requests == versions["2"] and arms[1].p99_ms > 0


def test_sticky_keys_always_get_the_same_version_by_parameter_or_header(
        admin: Admin, stub: ipb_grpc.GRPCInferenceServiceStub) -> None:
    set_split(admin, {1: 50, 2: 50}, sticky=True)
    keys = [f"user-{i}" for i in range(200)]
    first = {k: r.model_version for k, r in zip(
        keys, stream(stub, [request(i, key=k) for i, k in enumerate(keys)]), strict=True)}
    assert set(first.values()) == {"1", "2"}
    again = stream(stub, [request(i, key=k) for i, k in enumerate(keys * 5)])
    assert all(r.model_version == first[k] for k, r in zip(keys * 5, again, strict=True))
    for k in keys[:20]:
        response = stub.ModelInfer(request(key=None), metadata=(("x-routing-key", k),),
                                   timeout=30)
        assert response.model_version == first[k]


def test_pin_is_honoured_inside_the_serving_set_and_not_found_outside(
        admin: Admin, stub: ipb_grpc.GRPCInferenceServiceStub) -> None:
    set_split(admin, {1: 100, 2: 0})
    pinned = stub.ModelInfer(request(version="2"), timeout=30)
    assert pinned.model_version == "2"
    assert pinned.parameters["routing_arm"].string_param == "pinned"
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request(version="4"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_shadow_is_never_returned_and_is_compared(
        admin: Admin, stub: ipb_grpc.GRPCInferenceServiceStub) -> None:
    set_split(admin, {1: 100}, shadows={3: 1.0})
    responses = stream(stub, [request(i) for i in range(300)])
    assert {r.model_version for r in responses} == {"1"}
    deadline = time.monotonic() + 20
    while True:
        shown = admin.call("GetTrafficPolicy", apb.GetTrafficPolicyRequest(model=MODEL))
        shadow = next(a for a in shown.arms if a.shadow)
        if shadow.mirrored + shadow.dropped >= 300 and shadow.has_agreement:
            break
        assert time.monotonic() < deadline, shadow
        time.sleep(0.05)
    assert shadow.version == 3 and shadow.mirrored > 0 and shadow.shadow_failed == 0
    assert 0.0 <= shadow.agreement <= 1.0


def test_50_50_then_0_100_is_exact(admin: Admin,
                                   stub: ipb_grpc.GRPCInferenceServiceStub) -> None:
    set_split(admin, {1: 50, 2: 50})
    first = Counter(r.model_version for r in stream(stub, [request(i) for i in range(2000)]))
    assert abs(first["1"] - 1000) < 150
    set_split(admin, {1: 0, 2: 100})
    after = Counter(r.model_version for r in stream(stub, [request(i) for i in range(2000)]))
    assert after == Counter({"2": 2000})


def test_a_promotion_ends_the_experiment(admin: Admin,
                                         stub: ipb_grpc.GRPCInferenceServiceStub) -> None:
    set_split(admin, {1: 50, 4: 50})
    admin.promote(MODEL, 4)
    try:
        shown = admin.call("GetTrafficPolicy", apb.GetTrafficPolicyRequest(model=MODEL))
        assert not shown.HasField("policy") and shown.production == 4
        responses = stream(stub, [request(i) for i in range(300)])
        assert {r.model_version for r in responses} == {"4"}
        assert {r.parameters["routing_arm"].string_param for r in responses} == {"production"}
        assert any(e.action == "experiment.end" for e in admin.events(MODEL))
    finally:
        admin.promote(MODEL, 1)


def test_cli_sets_shows_and_clears_a_split(gateway: InProcessGateway, admin: Admin,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gateway.cli.main import main

    flags = ["--target", gateway.admin_address, "--token", OPERATOR_TOKEN]
    assert main(["traffic", "set", MODEL, "1=90", "2=10", "--sticky", "--shadow", "3:0.2",
                 *flags]) == 0
    assert "split" in capsys.readouterr().out
    assert main(["traffic", "show", MODEL, "--json", *flags]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["policy"]["sticky"] is True
    assert [(a["version"], a["weight"]) for a in shown["policy"]["arms"]] == [(1, 90), (2, 10)]
    assert shown["policy"]["shadows"] == [{"version": 3, "fraction": 0.2}]
    assert main(["traffic", "clear", MODEL, *flags]) == 0
    assert "none (everything to production)" in capsys.readouterr().out
    assert main(["traffic", "set", MODEL, "9=100", *flags]) == 1
    assert "error" in capsys.readouterr().err


def test_cli_starts_a_canary_ramp_at_its_first_step(
        gateway: InProcessGateway, admin: Admin, stub: ipb_grpc.GRPCInferenceServiceStub,
        capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.main import main

    flags = ["--target", gateway.admin_address, "--token", OPERATOR_TOKEN]
    assert main(["traffic", "canary", MODEL, "2", "--steps", "10,50,100",
                 "--min-requests", "1000000", "--min-seconds", "3600", *flags]) == 0
    out = capsys.readouterr().out
    assert "canary" in out and "running at 10%" in out
    versions = Counter(r.model_version for r in stream(stub, [request(i, key=f"k{i}")
                                                              for i in range(2000)]))
    assert abs(versions["2"] / 2000 - 0.10) < 0.03
    assert main(["traffic", "bandit", MODEL, "1", "2", "--floor", "0.2", *flags]) == 0
    assert "bandit" in capsys.readouterr().out
