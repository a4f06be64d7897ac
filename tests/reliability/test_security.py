"""Security: what a caller without the right token, role or port can do — nothing.

tests/admin/test_auth.py already checks, per admin method, that no token and one unknown
token are UNAUTHENTICATED and that a reader is refused every write. This module adds what
it leaves open: every method against every malformed or near-miss credential, the operator
token passing every method, refused calls with real arguments changing nothing (registry,
aliases, policies, request log, artifacts, audit trail), the inference and HTTP ports
exposing no control, uploads over the limits, and pickles — uploaded, sent as tensors or
smuggled as a repository "file" — never unpickled; plus a scan of the server's source for
any deserializer that could unpickle.
"""

from __future__ import annotations

import ast
import base64
import os
import pickle
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest
from google.protobuf import symbol_database
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc
from gateway.pb import grpc_service_pb2 as pb
from gateway.pb import grpc_service_pb2_grpc as pb_grpc
from tests import onnx_models
from tests.reliability.conftest import (
    AUTH_CONFIG,
    OPERATOR,
    OPERATOR_TOKEN,
    READER,
    READER_TOKEN,
    in_process,
)
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

ADMIN_SERVICE = apb.DESCRIPTOR.services_by_name["AdminService"]
METHODS = [m.name for m in ADMIN_SERVICE.methods]
MAX_UPLOAD = 64 * 1024
MAX_MESSAGE = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = ("gateway", "lifecycle")

BAD_CREDENTIALS: dict[str, tuple[tuple[str, str | bytes], ...]] = {
    "empty value": (("authorization", ""),),
    "scheme only": (("authorization", "Bearer"),),
    "scheme and spaces": (("authorization", "Bearer    "),),
    "token without scheme": (("authorization", OPERATOR_TOKEN),),
    "basic scheme": (("authorization", "Basic " + base64.b64encode(
        f"ops:{OPERATOR_TOKEN}".encode()).decode()),),
    "token prefix": (("authorization", f"Bearer {OPERATOR_TOKEN[:-1]}"),),
    "token plus a character": (("authorization", f"Bearer {OPERATOR_TOKEN}x"),),
    "token in upper case": (("authorization", f"Bearer {OPERATOR_TOKEN.upper()}"),),
    "two tokens": (("authorization", f"Bearer {OPERATOR_TOKEN} {READER_TOKEN}"),),
    "token under another key": (("x-api-key", OPERATOR_TOKEN),
                                ("token", f"Bearer {OPERATOR_TOKEN}")),
    "token as binary metadata": (("authorization-bin", f"Bearer {OPERATOR_TOKEN}".encode()),),
}


class Sentinel:
    """Unpickling this creates ``path``: proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (str(self.path),))


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pickles") / "UNPICKLED"


@pytest.fixture(scope="module")
def pickles(sentinel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A plain pickle, a joblib file (sklearn's usual format) and a pickle wearing an ONNX
    file's first bytes; each creates ``sentinel`` if loaded."""
    payload = pickle.dumps(Sentinel(sentinel), protocol=pickle.HIGHEST_PROTOCOL)
    path = tmp_path_factory.mktemp("joblib") / "model.joblib"
    joblib.dump(Sentinel(sentinel), path)
    assert not sentinel.exists()
    return {"pickle": payload, "joblib": path.read_bytes(),
            "onnx-looking pickle": b"\x08\x09\x12\x07pytorch" + payload}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory,
            model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    """``fraud`` (version 1 in production, version 2 registered and aliased ``staging``,
    a split policy over both) and ``id_bytes``; upload and message limits set low."""
    root = tmp_path_factory.mktemp("secured")
    server = in_process(
        root, {"fraud": model_files["logreg"], "id_bytes": model_files["id_bytes"]},
        f"[server]\nmax_upload_bytes = {MAX_UPLOAD}\nmax_message_bytes = {MAX_MESSAGE}\n"
        + AUTH_CONFIG)
    with grpc.insecure_channel(server.admin_address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        admin.RegisterVersion(upload("fraud", model_files["logreg_b"].read_bytes()),
                              metadata=OPERATOR, timeout=60)
        admin.SetAlias(apb.SetAliasRequest(model="fraud", alias="staging", version=2),
                       metadata=OPERATOR, timeout=60)
        admin.SetTrafficPolicy(apb.SetTrafficPolicyRequest(model="fraud", arms=[
            apb.TrafficArm(version=1, weight=0.5), apb.TrafficArm(version=2, weight=0.5)]),
            metadata=OPERATOR, timeout=60)
    with grpc.insecure_channel(server.grpc_address) as channel:
        infer(channel, "seed")
    yield server
    server.stop()


@pytest.fixture
def admin_channel(secured: InProcessGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(secured.admin_address) as channel:
        yield channel


@pytest.fixture
def inference_channel(secured: InProcessGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(secured.grpc_address) as channel:
        yield channel


def upload(model: str, data: bytes, chunk: int = 16 * 1024
           ) -> Iterator[apb.RegisterVersionRequest]:
    yield apb.RegisterVersionRequest(header=apb.RegisterVersionHeader(model=model))
    for start in range(0, len(data), chunk):
        yield apb.RegisterVersionRequest(chunk=data[start:start + chunk])


def infer(channel: grpc.Channel, request_id: str) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="fraud", id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 20])
    request.raw_input_contents.append(np.zeros((1, 20), dtype=np.float32).tobytes())
    return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def call(channel: grpc.Channel, method: str, request: Any = None,
         metadata: tuple[tuple[str, str | bytes], ...] = ()) -> Any:
    """Call an AdminService method by name, however it streams; ``request`` defaults to
    an empty message of its input type."""
    descriptor = ADMIN_SERVICE.methods_by_name[method]
    db = symbol_database.Default()
    request_cls = db.GetSymbol(descriptor.input_type.full_name)
    response_cls = db.GetSymbol(descriptor.output_type.full_name)
    kinds = {(False, False): channel.unary_unary, (True, False): channel.stream_unary,
             (False, True): channel.unary_stream, (True, True): channel.stream_stream}
    stub = kinds[(descriptor.client_streaming, descriptor.server_streaming)](
        f"/{ADMIN_SERVICE.full_name}/{method}",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString)
    if request is None:
        request = iter([request_cls()]) if descriptor.client_streaming else request_cls()
    result = stub(request, metadata=metadata, timeout=30)
    return list(result) if descriptor.server_streaming else result


def code_of(channel: grpc.Channel, method: str, request: Any = None,
            metadata: tuple[tuple[str, str | bytes], ...] = ()) -> grpc.StatusCode:
    try:
        call(channel, method, request, metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def state(channel: grpc.Channel, secured: InProcessGateway) -> dict[str, Any]:
    """Everything a refused call could have changed, as comparable values."""
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    models = admin.ListModels(apb.ListModelsRequest(), metadata=READER, timeout=30).models
    versions = {m.name: [(v.version, v.status, tuple(v.aliases), tuple(v.tags))
                         for v in admin.ListVersions(apb.ListVersionsRequest(model=m.name),
                                                     metadata=READER, timeout=30).versions]
                for m in models}
    traffic = admin.GetTrafficPolicy(apb.GetTrafficPolicyRequest(model="fraud"),
                                     metadata=READER, timeout=30)
    logged = list(admin.QueryRequests(apb.QueryRequestsRequest(model="fraud",
                                                               omit_payload=True),
                                      metadata=READER, timeout=30))
    events = admin.ListEvents(apb.ListEventsRequest(limit=10000), metadata=READER,
                              timeout=30).events
    artifacts = sorted(str(p.relative_to(secured.settings.effective_artifacts_dir))
                       for p in secured.settings.effective_artifacts_dir.rglob("*"))
    return {
        "models": sorted((m.name, dict(m.aliases), m.version_count, m.served_version,
                          sorted((x.version, x.explicit) for x in m.loads)) for m in models),
        "versions": versions,
        "policy": traffic.policy.SerializeToString(deterministic=True),
        "logged": sorted(r.record_id for r in logged),
        "events": [e.id for e in events],
        "artifacts": artifacts,
    }


@pytest.mark.parametrize("method", METHODS)
def test_every_admin_method_refuses_every_malformed_or_near_miss_credential(
        admin_channel: grpc.Channel, method: str) -> None:
    for case, metadata in BAD_CREDENTIALS.items():
        assert code_of(admin_channel, method, metadata=metadata) == \
            grpc.StatusCode.UNAUTHENTICATED, (method, case)


@pytest.mark.parametrize("method", METHODS)
def test_the_operator_token_passes_every_admin_method(admin_channel: grpc.Channel,
                                                      method: str) -> None:
    """With an empty request a method may fail on its arguments, never on the token."""
    code = code_of(admin_channel, method, metadata=OPERATOR)
    assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (method, code)


DESTRUCTIVE: list[tuple[str, Callable[[], Any]]] = [
    # Real arguments for every write: each would change something if it got through.
    # Factories, since an upload stream can be sent once.
    ("RegisterVersion", lambda: upload("fraud", onnx_models.logreg_like_model(seed=11))),
    ("RegisterVersion", lambda: upload("intruder", onnx_models.logreg_like_model(seed=13))),
    ("SetAlias", lambda: apb.SetAliasRequest(model="fraud", alias="staging", version=1)),
    ("Promote", lambda: apb.PromoteRequest(model="fraud", version=2)),
    ("Rollback", lambda: apb.RollbackRequest(model="fraud")),
    ("ArchiveVersion", lambda: apb.ArchiveVersionRequest(model="fraud", version=2)),
    ("LoadVersion", lambda: apb.LoadVersionRequest(model="fraud", version=2)),
    ("UnloadVersion", lambda: apb.UnloadVersionRequest(model="fraud", version=2)),
    ("PurgeRequests", lambda: apb.PurgeRequestsRequest(model="fraud")),
    ("Retrain", lambda: apb.RetrainRequest(model="fraud")),
    ("SetTriggers", lambda: apb.SetTriggersRequest(model="fraud")),
    ("SetTrafficPolicy", lambda: apb.SetTrafficPolicyRequest(
        model="fraud", arms=[apb.TrafficArm(version=2, weight=1.0)])),
    ("ClearTrafficPolicy", lambda: apb.ClearTrafficPolicyRequest(model="fraud")),
    ("StartCanary", lambda: apb.StartCanaryRequest(model="fraud", version=2)),
    ("StartBandit", lambda: apb.StartBanditRequest(model="fraud", versions=[1, 2])),
]


def test_refused_writes_with_real_arguments_change_nothing(
        admin_channel: grpc.Channel, secured: InProcessGateway) -> None:
    before = state(admin_channel, secured)
    writes = {m for m in METHODS if code_of(admin_channel, m, metadata=READER)
              == grpc.StatusCode.PERMISSION_DENIED}
    assert {method for method, _ in DESTRUCTIVE} == writes, "a write without a real call"
    for method, request in DESTRUCTIVE:
        for metadata, expected in ((READER, grpc.StatusCode.PERMISSION_DENIED),
                                   (BAD_CREDENTIALS["token prefix"],
                                    grpc.StatusCode.UNAUTHENTICATED),
                                   ((), grpc.StatusCode.UNAUTHENTICATED)):
            assert code_of(admin_channel, method, request(), metadata) == expected, method
    assert state(admin_channel, secured) == before


def test_the_inference_port_exposes_no_control(inference_channel: grpc.Channel,
                                               admin_channel: grpc.Channel,
                                               secured: InProcessGateway,
                                               pickles: dict[str, bytes],
                                               sentinel: Path) -> None:
    before = state(admin_channel, secured)
    # The admin service is not there at all, whatever the token.
    for method in METHODS:
        assert code_of(inference_channel, method, metadata=OPERATOR) == \
            grpc.StatusCode.UNIMPLEMENTED, method
    reflection = reflection_pb2_grpc.ServerReflectionStub(inference_channel)
    listed = {s.name for r in reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
        for s in r.list_services_response.service}
    assert ADMIN_SERVICE.full_name not in listed and "inference.GRPCInferenceService" in listed
    # Repository control is off by default: refused with any token, even an operator's,
    # and a model file smuggled in the load parameters is not even looked at.
    stub = pb_grpc.GRPCInferenceServiceStub(inference_channel)
    smuggled = {f"file:1/model.{kind}": pb.ModelRepositoryParameter(bytes_param=data)
                for kind, data in pickles.items()}
    for metadata in ((), READER, OPERATOR):
        for rpc in (lambda md: stub.RepositoryModelUnload(
                        pb.RepositoryModelUnloadRequest(model_name="fraud"), metadata=md),
                    lambda md: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(
                        model_name="intruder", parameters=smuggled), metadata=md)):
            with pytest.raises(grpc.RpcError) as info:
                rpc(metadata)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "allow_repository_control" in (info.value.details() or "")
    assert stub.ModelReady(pb.ModelReadyRequest(name="fraud"), timeout=30).ready
    # The HTTP port answers GET on its three paths and nothing else.
    port = secured.http_port
    for method, path in (("POST", "/v2/repository/models/fraud/unload"),
                         ("POST", "/v2/repository/models/intruder/load"),
                         ("DELETE", "/v2/models/fraud"), ("PUT", "/metrics"),
                         ("GET", "/v2/repository/index")):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                         data=b"{}" if method != "GET" else None)
        with pytest.raises(urllib.error.HTTPError) as http_error:
            urllib.request.urlopen(request, timeout=10)
        assert http_error.value.code in (404, 405), (method, path)
    assert state(admin_channel, secured) == before
    assert not sentinel.exists()


def test_uploads_over_the_limits_are_refused_and_store_nothing(
        admin_channel: grpc.Channel, secured: InProcessGateway) -> None:
    before = state(admin_channel, secured)
    # Streamed far past max_upload_bytes: refused once the limit is crossed, without the
    # server reading the rest.
    chunk, chunks = 64 * 1024, 512
    sent = 0

    def flood() -> Iterator[apb.RegisterVersionRequest]:
        nonlocal sent
        yield apb.RegisterVersionRequest(header=apb.RegisterVersionHeader(model="flood"))
        for _ in range(chunks):
            sent += 1
            yield apb.RegisterVersionRequest(chunk=b"\x08" * chunk)

    with pytest.raises(grpc.RpcError) as info:
        call(admin_channel, "RegisterVersion", flood(), OPERATOR)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"larger than the limit of {MAX_UPLOAD} bytes" in (info.value.details() or "")
    assert sent < chunks, "the server read the whole oversize upload"
    # One message over max_message_bytes never reaches our code.
    with pytest.raises(grpc.RpcError) as info:
        call(admin_channel, "RegisterVersion", upload("flood", b"\x08" * (MAX_MESSAGE + 1),
                                                      chunk=MAX_MESSAGE + 1), OPERATOR)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert state(admin_channel, secured) == before


def test_pickles_are_refused_as_models_and_never_unpickled(
        admin_channel: grpc.Channel, inference_channel: grpc.Channel,
        secured: InProcessGateway, pickles: dict[str, bytes], sentinel: Path) -> None:
    before = state(admin_channel, secured)
    for kind, data in pickles.items():
        for model in ("fraud", "new-model"):
            with pytest.raises(grpc.RpcError) as info:
                call(admin_channel, "RegisterVersion", upload(model, data), OPERATOR)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kind
            assert "not an ONNX model" in (info.value.details() or ""), kind
    assert state(admin_channel, secured) == before
    # As tensor data a pickle is bytes like any other: served, logged and returned as is.
    stub = pb_grpc.GRPCInferenceServiceStub(inference_channel)
    payload = pickles["pickle"]
    request = pb.ModelInferRequest(model_name="id_bytes", id="pickle-tensor")
    request.inputs.add(name="x", datatype="BYTES", shape=[1, 4],
                       contents=pb.InferTensorContents(bytes_contents=[payload] * 4))
    response = stub.ModelInfer(request, timeout=30)
    assert response.outputs[0].datatype == "BYTES"
    admin = admin_pb2_grpc.AdminServiceStub(admin_channel)

    def logged() -> list[apb.LoggedRequest]:
        return [r for r in admin.QueryRequests(apb.QueryRequestsRequest(model="id_bytes"),
                                               metadata=READER, timeout=30)
                if r.request_id == "pickle-tensor"]

    records = wait_until(logged, what="the pickle request in the request log")
    assert payload in records[0].inputs[0].data
    assert not sentinel.exists()


# ------------------------------------------------------------------------- source scan

PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve",
                    "marshal", "jsonpickle", "torch", "copyreg"}
UNSAFE_NAMES = {"read_pickle", "unsafe_load", "full_load", "PickleType"}


def server_sources() -> Iterator[Path]:
    """Every module of the server's packages but the generated protobuf code."""
    for package in SERVER_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT).parts[1] != "pb":
                yield path


def unsafe_uses(source: str, where: str) -> list[str]:
    """Imports of pickling modules, unpickling helpers by name, ``np.load`` with
    ``allow_pickle`` anything but False, and ``yaml.load`` without a safe loader.

    (``lifecycle.training`` starts its spawn child with a directory path as the only
    argument; the child and the parent exchange files, not pickles.)"""
    found = []
    for node in ast.walk(ast.parse(source)):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{at}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in PICKLING_MODULES:
                found.append(f"{at}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute | ast.Name | ast.alias):
            name = (node.attr if isinstance(node, ast.Attribute)
                    else node.id if isinstance(node, ast.Name) else node.name)
            if name in UNSAFE_NAMES:
                found.append(f"{at}: {name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            allow = keywords.get("allow_pickle")
            if (target in ("np.load", "numpy.load") and allow is not None
                    and not (isinstance(allow, ast.Constant) and allow.value is False)):
                found.append(f"{at}: {target}(allow_pickle={ast.unparse(allow)})")
            loader = keywords.get("Loader")
            if target == "yaml.load" and (loader is None or "Safe" not in ast.unparse(loader)):
                found.append(f"{at}: yaml.load without a safe loader")
    return found


def test_no_server_code_can_unpickle() -> None:
    sources = list(server_sources())
    assert len(sources) > 50
    found = [use for path in sources
             for use in unsafe_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


@pytest.mark.parametrize(("source", "hits"), [
    ("import pickle", 1), ("import joblib", 1), ("from cloudpickle import loads", 1),
    ("import dill.settings", 1), ("from sqlalchemy import PickleType", 1),
    ("col = sa.PickleType()", 1), ("x = np.load(f, allow_pickle=True)", 1),
    ("x = np.load(f, allow_pickle=flag)", 1), ("x = np.load(f, allow_pickle=False)", 0),
    ("x = np.load(f)", 0), ("df = pd.read_pickle(f)", 1), ("yaml.load(text)", 1),
    ("yaml.load(text, Loader=yaml.SafeLoader)", 0), ("data = json.loads(s)", 0),
])
def test_the_source_scan_fires_on_what_it_looks_for(source: str, hits: int) -> None:
    """The scan is only as good as its patterns: each must fire on a sample."""
    assert len(unsafe_uses(source, "sample")) == hits
