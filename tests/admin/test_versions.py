"""Registering, inspecting, downloading, archiving and aliasing versions over the admin API."""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from gateway.pb import admin_pb2 as apb
from tests import onnx_models
from tests.admin.helpers import MAX_UPLOAD, Admin, custom_op_model, rpc_error, sha256, upload
from tests.support.inprocess import InProcessGateway

FRAUD_INPUTS = [{"name": "features", "datatype": "FP32", "shape": ["-1", "20"]}]


def test_register_creates_the_model_from_the_files_signature(
        admin: Admin, name: str, fraud_onnx: dict[int, bytes]) -> None:
    data = fraud_onnx[1]
    response = admin.register(
        name, data, description="first cut", tags=["candidate", "q3"], source="s3://x/y.onnx",
        task="classification", params={"C": 0.1, "solver": "lbfgs"}, metrics={"auc": 0.91},
        metadata={"owner": "risk"}, sha256=sha256(data))
    assert response.created and response.model_created
    v = response.version
    assert (v.model, v.version, v.status, v.sha256, v.size_bytes) == (
        name, 1, "registered", sha256(data), len(data))
    assert list(v.tags) == ["candidate", "q3"] and v.description == "first cut"
    assert json_format.MessageToDict(v.params) == {"C": 0.1, "solver": "lbfgs"}
    assert json_format.MessageToDict(v.metrics) == {"auc": 0.91}
    assert json_format.MessageToDict(v.metadata) == {"owner": "risk"}
    assert (v.lineage.source, v.lineage.registered_by) == ("s3://x/y.onnx", "ops")
    assert v.load.state == apb.LOAD_STATE_NOT_LOADED and not v.aliases
    model = admin.model(name)
    assert model.task == "classification" and model.version_count == 1
    assert model.latest_version == 1 and model.served_version == 0 and not model.aliases
    assert json_format.MessageToDict(model.signature)["inputs"] == FRAUD_INPUTS
    assert [t.name for t in model.signature.outputs] == ["label", "probabilities"]


def test_same_bytes_twice_return_the_existing_version(
        admin: Admin, name: str, fraud_onnx: dict[int, bytes]) -> None:
    first = admin.register(name, fraud_onnx[1], description="one")
    second = admin.register(name, fraud_onnx[7])
    again = admin.register(name, fraud_onnx[1], description="ignored", chunk=1000)
    assert (first.version.version, second.version.version) == (1, 2)
    assert not again.created and not again.model_created
    assert again.version.version == 1 and again.version.description == "one"
    assert len(admin.events(name, "version.register")) == 2


def invalid(admin: Admin, model: str, data: bytes, **header: object) -> str:
    error = rpc_error(admin.register, model, data, **header)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    return error.details()


def assert_nothing_stored(admin: Admin, gateway: InProcessGateway, model: str,
                          artifacts_before: set[str]) -> None:
    assert rpc_error(admin.model, model).code() == grpc.StatusCode.NOT_FOUND
    assert artifact_files(gateway) == artifacts_before


def artifact_files(gateway: InProcessGateway) -> set[str]:
    root = gateway.settings.effective_artifacts_dir / "sha256"
    return {p.name for p in root.iterdir()}


def test_invalid_uploads_name_the_problem_and_store_nothing(
        admin: Admin, gateway: InProcessGateway, name: str,
        fraud_onnx: dict[int, bytes]) -> None:
    before = artifact_files(gateway)
    good = fraud_onnx[1]
    assert "not an ONNX model" in invalid(admin, name, b"\x00garbage" * 50)
    assert "not an ONNX model" in invalid(admin, name, good[: len(good) // 2])
    assert "upload is empty" in invalid(admin, name, b"")
    assert f"larger than the limit of {MAX_UPLOAD} bytes" in invalid(
        admin, name, good * (MAX_UPLOAD // len(good) + 1))
    assert "onnxruntime cannot load the model" in invalid(admin, name, custom_op_model())
    assert "hashes to sha256" in invalid(admin, name, good, sha256="0" * 64)
    assert "model name must match" in invalid(admin, "no spaces allowed", good)
    assert "tags must be non-empty" in invalid(admin, name, good, tags=[""])
    assert "reserved" in invalid(admin, name, good, metadata={"params": 1})
    assert "metric 'auc' must be a finite number" in invalid(
        admin, name, good, metrics={"auc": "high"})
    assert_nothing_stored(admin, gateway, name, before)


def test_signature_mismatch_is_refused_and_stores_nothing(
        admin: Admin, gateway: InProcessGateway, name: str,
        fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1])
    before = artifact_files(gateway)
    details = invalid(admin, name, onnx_models.two_output_model())
    assert details == ("signature does not match the model's: input names differ: "
                       "expected ['features'], got ['a']")
    narrower = onnx_models.logreg_like_model(n_features=20, seed=3)
    assert admin.register(name, narrower).version.version == 2  # same names, types, ranks
    assert artifact_files(gateway) == before | {f"{sha256(narrower)}.onnx"}
    versions = admin.call("ListVersions", apb.ListVersionsRequest(model=name)).versions
    assert [v.version for v in versions] == [1, 2]


def test_header_must_come_first_and_only_once(admin: Admin, name: str,
                                              fraud_onnx: dict[int, bytes]) -> None:
    chunks = list(upload(name, fraud_onnx[1]))
    error = rpc_error(admin.call, "RegisterVersion", iter(chunks[1:]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message must carry the header" in error.details()
    error = rpc_error(admin.call, "RegisterVersion", iter([*chunks, chunks[0]]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only the first message may carry a header" in error.details()
    error = rpc_error(admin.call, "RegisterVersion", iter([]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_model_or_version_is_not_found(admin: Admin) -> None:
    calls = [
        ("GetModel", apb.GetModelRequest(name="nope")),
        ("ListVersions", apb.ListVersionsRequest(model="nope")),
        ("GetVersion", apb.GetVersionRequest(model="nope", version=1)),
        ("GetVersion", apb.GetVersionRequest(model="fraud", version=99)),
        ("Promote", apb.PromoteRequest(model="fraud", version=99)),
        ("Promote", apb.PromoteRequest(model="nope", version=1)),
        ("Rollback", apb.RollbackRequest(model="nope")),
        ("LoadVersion", apb.LoadVersionRequest(model="fraud", version=99)),
        ("UnloadVersion", apb.UnloadVersionRequest(model="fraud", version=99)),
        ("ArchiveVersion", apb.ArchiveVersionRequest(model="fraud", version=99)),
        ("SetAlias", apb.SetAliasRequest(model="fraud", alias="staging", version=99)),
    ]
    for method, request in calls:
        error = rpc_error(admin.call, method, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, (method, error.details())
    error = rpc_error(admin.download, "fraud", 99)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "version 99 of model 'fraud' not found"
    assert rpc_error(admin.model, "nope").details() == "model 'nope' not found"


def test_list_versions_filters_by_status_tag_and_text(
        admin: Admin, name: str, fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1], description="Baseline logistic", tags=["base"])
    admin.register(name, fraud_onnx[7], description="more regularised", tags=["cand"])
    admin.register(name, fraud_onnx[11], description="another LOGISTIC try", tags=["cand"])
    admin.call("ArchiveVersion", apb.ArchiveVersionRequest(model=name, version=3))

    def listed(**filters: str) -> list[int]:
        request = apb.ListVersionsRequest(model=name, **filters)
        return [v.version for v in admin.call("ListVersions", request).versions]

    assert listed() == [1, 2, 3]
    assert listed(tag="cand") == [2, 3]
    assert listed(status="archived") == [3]
    assert listed(status="registered", tag="cand") == [2]
    assert listed(text="logistic") == [1, 3]
    assert listed(tag="none") == []
    error = rpc_error(listed, status="gone")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "status must be" in error.details()


def test_download_round_trip_is_verified(admin: Admin, name: str,
                                         fraud_onnx: dict[int, bytes]) -> None:
    data = fraud_onnx[7]
    admin.register(name, data)
    info, chunks = admin.download(name, 1, chunk_bytes=100)
    assert (info.model, info.version, info.sha256, info.size_bytes) == (
        name, 1, sha256(data), len(data))
    assert len(chunks) == -(-len(data) // 100) and all(len(c) <= 100 for c in chunks)
    assert b"".join(chunks) == data and sha256(b"".join(chunks)) == info.sha256
    info, chunks = admin.download(name, 1)
    assert chunks == [data]
    error = rpc_error(admin.download, name, 1, chunk_bytes=1 << 40)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_download_of_a_corrupt_artifact_fails(admin: Admin, gateway: InProcessGateway,
                                              name: str) -> None:
    data = onnx_models.logreg_like_model(seed=21)
    admin.register(name, data)
    path = gateway.settings.effective_artifacts_dir / "sha256" / f"{sha256(data)}.onnx"
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    error = rpc_error(admin.download, name, 1)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is corrupt" in error.details()


def test_archive_refuses_aliased_versions_and_blocks_promotion(
        admin: Admin, name: str, fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1])
    admin.register(name, fraud_onnx[7])
    admin.promote(name, 1)
    error = rpc_error(admin.call, "ArchiveVersion",
                      apb.ArchiveVersionRequest(model=name, version=1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "aliased as production" in error.details()
    admin.call("LoadVersion", apb.LoadVersionRequest(model=name, version=2))
    archived = admin.call("ArchiveVersion", apb.ArchiveVersionRequest(
        model=name, version=2, reason="worse on holdout"))
    assert archived.status == "archived"
    assert archived.load.state == apb.LOAD_STATE_NOT_LOADED and not archived.load.explicit
    event = admin.events(name, "version.status")[0]
    assert (event.version, event.before.string_value, event.after.string_value) == (
        2, "registered", "archived")
    assert event.detail["reason"] == "worse on holdout"
    for method, request in (("Promote", apb.PromoteRequest(model=name, version=2)),
                            ("LoadVersion", apb.LoadVersionRequest(model=name, version=2))):
        error = rpc_error(admin.call, method, request)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is archived" in error.details()


def test_set_alias_with_compare_and_set(admin: Admin, name: str,
                                        fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1])
    admin.register(name, fraud_onnx[7])

    def set_alias(version: int, **kw: int) -> apb.AliasChange:
        return admin.call("SetAlias", apb.SetAliasRequest(
            model=name, alias="staging", version=version, **kw))

    created = set_alias(1, expected_version=0)
    assert not created.HasField("previous_version") and created.version == 1
    assert rpc_error(set_alias, 2, expected_version=0).code() == grpc.StatusCode.ABORTED
    moved = set_alias(2, expected_version=1)
    assert (moved.previous_version, moved.version) == (1, 2)
    error = rpc_error(set_alias, 1, expected_version=1)
    assert error.code() == grpc.StatusCode.ABORTED and "is 2, expected 1" in error.details()
    assert dict(admin.model(name).aliases) == {"staging": 2}
    error = rpc_error(admin.call, "SetAlias", apb.SetAliasRequest(
        model=name, alias="production", version=1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "Promote" in error.details()
    version = admin.call("GetVersion", apb.GetVersionRequest(model=name, version=2))
    assert list(version.aliases) == ["staging"]


def test_list_events_filters_and_limits(admin: Admin, name: str,
                                        fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1])
    admin.register(name, fraud_onnx[7])
    admin.promote(name, 1)
    admin.promote(name, 2)
    events = admin.events(name)
    assert [e.action for e in events] == [
        "alias.set", "alias.set", "version.register", "version.register", "model.create"]
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    newest = events[0]
    assert (newest.actor, newest.model, newest.version) == ("ops", name, 2)
    assert (newest.before.number_value, newest.after.number_value) == (1, 2)
    assert newest.detail["alias"] == "production" and newest.time.seconds > 0
    assert [e.version for e in admin.events(name, "alias.set", limit=1)] == [2]
    assert admin.events("nope") == []
    error = rpc_error(admin.events, limit=10_001)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_list_models_includes_every_model(admin: Admin, name: str,
                                          fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1])
    models = {m.name: m for m in admin.call("ListModels", apb.ListModelsRequest()).models}
    assert {"fraud", name} <= set(models)
    fraud = models["fraud"]
    assert dict(fraud.aliases) == {"production": 1} and fraud.served_version == 1
    assert [(v.version, v.state, v.production) for v in fraud.loads] == [
        (1, apb.LOAD_STATE_LOADED, True)]
