"""Promote, roll back, load and unload: what is served follows, and failures leave it alone."""

from __future__ import annotations

import random

import grpc

from gateway.pb import admin_pb2 as apb
from tests import onnx_models
from tests.admin.helpers import Admin, infer, rpc_error, sha256
from tests.support.inprocess import InProcessGateway


def corrupt(gateway: InProcessGateway, data: bytes) -> None:
    path = gateway.settings.effective_artifacts_dir / "sha256" / f"{sha256(data)}.onnx"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


def served(gateway: InProcessGateway, model: str) -> str:
    return infer(gateway.grpc_address, model).model_version


def test_promote_then_rollback_moves_what_is_served(
        admin: Admin, gateway: InProcessGateway, name: str,
        fraud_onnx: dict[int, bytes]) -> None:
    for seed in (1, 7, 11):
        admin.register(name, fraud_onnx[seed])
    first = admin.promote(name, 1)
    assert not first.HasField("previous_version") and first.alias == "production"
    assert served(gateway, name) == "1"
    change = admin.promote(name, 3)
    assert (change.previous_version, change.version) == (1, 3)
    assert served(gateway, name) == "3"
    model = admin.model(name)
    assert model.served_version == 3 and dict(model.aliases) == {"production": 3}
    # The old version drained and was unloaded: only production is loaded.
    assert [(v.version, v.production) for v in model.loads] == [(3, True)]

    back = admin.rollback(name)
    assert (back.model, back.alias, back.previous_version, back.version) == (
        name, "production", 3, 1)
    assert served(gateway, name) == "1"
    assert admin.model(name).served_version == 1
    error = rpc_error(admin.rollback, name)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no earlier version to roll back to" in error.details()
    assert served(gateway, name) == "1" and dict(admin.model(name).aliases) == {
        "production": 1}
    actions = [(e.action, e.before.number_value, e.after.number_value)
               for e in admin.events(name) if e.action.startswith("alias.")]
    assert actions == [("alias.rollback", 3, 1), ("alias.set", 1, 3), ("alias.set", 0, 1)]


def test_rollback_walks_back_through_the_history(
        admin: Admin, gateway: InProcessGateway, name: str,
        fraud_onnx: dict[int, bytes]) -> None:
    for seed in (1, 7, 11):
        admin.register(name, fraud_onnx[seed])
    for version in (1, 2, 3):
        admin.promote(name, version)
    assert admin.rollback(name).version == 2
    assert admin.rollback(name).version == 1
    assert served(gateway, name) == "1"
    assert rpc_error(admin.rollback, name).code() == grpc.StatusCode.FAILED_PRECONDITION


def test_failed_promotion_leaves_production_serving_and_records_why(
        admin: Admin, gateway: InProcessGateway, name: str,
        fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1])
    broken = onnx_models.logreg_like_model(seed=31)
    admin.register(name, broken)
    admin.promote(name, 1)
    corrupt(gateway, broken)

    error = rpc_error(admin.promote, name, 2)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "artifact of version 2" in error.details() and "corrupt" in error.details()
    assert served(gateway, name) == "1"
    model = admin.model(name)
    assert dict(model.aliases) == {"production": 1} and model.served_version == 1
    failed = admin.events(name, "promote.failed")
    assert len(failed) == 1 and failed[0].version == 2 and failed[0].actor == "ops"
    assert "corrupt" in failed[0].detail["reason"]
    version = admin.call("GetVersion", apb.GetVersionRequest(model=name, version=2))
    assert version.load.state == apb.LOAD_STATE_FAILED and "corrupt" in version.load.failure
    assert [e.version for e in admin.events(name, "alias.set")] == [1]


def test_failed_rollback_leaves_production_serving_and_the_alias_unmoved(
        admin: Admin, gateway: InProcessGateway, name: str,
        fraud_onnx: dict[int, bytes]) -> None:
    old = onnx_models.logreg_like_model(seed=37)
    admin.register(name, old)
    admin.register(name, fraud_onnx[7])
    admin.promote(name, 1)
    admin.promote(name, 2)  # version 1 is unloaded now; its file is read again on rollback
    corrupt(gateway, old)
    error = rpc_error(admin.rollback, name)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert served(gateway, name) == "2"
    assert dict(admin.model(name).aliases) == {"production": 2}
    failed = admin.events(name, "rollback.failed")
    assert len(failed) == 1 and failed[0].version == 1 and "corrupt" in failed[0].detail[
        "reason"]


def test_load_and_unload_a_version_besides_production(
        admin: Admin, gateway: InProcessGateway, name: str,
        fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1])
    admin.register(name, fraud_onnx[7])
    admin.promote(name, 1)
    load = admin.call("LoadVersion", apb.LoadVersionRequest(model=name, version=2))
    assert (load.version, load.state, load.explicit, load.production) == (
        2, apb.LOAD_STATE_LOADED, True, False)
    assert load.warmup_p99_us > 0
    assert infer(gateway.grpc_address, name, "2").model_version == "2"
    assert served(gateway, name) == "1"

    error = rpc_error(admin.call, "UnloadVersion",
                      apb.UnloadVersionRequest(model=name, version=1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is production" in error.details()
    unload = admin.call("UnloadVersion", apb.UnloadVersionRequest(model=name, version=2))
    assert unload.state == apb.LOAD_STATE_NOT_LOADED and not unload.explicit
    error = rpc_error(infer, gateway.grpc_address, name, "2")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert [e.action for e in admin.events(name) if e.action in ("load", "unload")] == [
        "unload", "load"]


def test_promoting_an_explicitly_loaded_version_keeps_it_after_a_rollback(
        admin: Admin, gateway: InProcessGateway, name: str,
        fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1])
    admin.register(name, fraud_onnx[7])
    admin.promote(name, 1)
    admin.call("LoadVersion", apb.LoadVersionRequest(model=name, version=2))
    admin.promote(name, 2)
    admin.rollback(name)
    loads = {v.version: (v.state, v.production, v.explicit) for v in admin.model(name).loads}
    assert loads == {1: (apb.LOAD_STATE_LOADED, True, False),
                     2: (apb.LOAD_STATE_LOADED, False, True)}


def test_sixteen_concurrent_promotes_and_rollbacks_end_consistent(
        admin: Admin, gateway: InProcessGateway, name: str,
        fraud_onnx: dict[int, bytes]) -> None:
    for seed in (1, 7, 11, 13):
        admin.register(name, fraud_onnx[seed])
    admin.promote(name, 1)
    baseline = admin.events(name)[0].id
    rng = random.Random(4)
    calls = [("Rollback", apb.RollbackRequest(model=name)) if rng.random() < 0.4 else
             ("Promote", apb.PromoteRequest(model=name, version=rng.randint(1, 4)))
             for _ in range(16)]
    futures = [admin.future(method, request) for method, request in calls]
    succeeded = 0
    for future in futures:
        error = future.exception()
        if error is None:
            succeeded += 1
        else:  # only "nothing to roll back to": no conflicts, no lost updates
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            assert "no earlier version" in error.details()
    assert succeeded >= 8

    moves = [e for e in reversed(admin.events(name))
             if e.id > baseline and e.action in ("alias.set", "alias.rollback")]
    assert len(moves) == succeeded  # one alias event per successful call
    chain = [int(moves[0].before.number_value)]
    for event in moves:
        assert int(event.before.number_value) == chain[-1], "an alias move was lost"
        chain.append(int(event.after.number_value))
    model = admin.model(name)
    assert dict(model.aliases)["production"] == chain[-1] == model.served_version
    assert served(gateway, name) == str(chain[-1])
    assert [v.version for v in model.loads if v.state == apb.LOAD_STATE_LOADED] == [chain[-1]]


def test_the_model_manager_is_the_deployer(gateway: InProcessGateway) -> None:
    from lifecycle.deployer import Deployer

    assert isinstance(gateway.app.manager, Deployer)
