"""Every admin RPC needs a bearer token with the right role; the table covers every method."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import symbol_database
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.auth import TokenAuthority
from gateway.pb import admin_pb2 as apb
from gateway.rpc.admin_auth import ADMIN_ROLES, ADMIN_SERVICE, AdminInterceptor
from gateway.settings import TokenSettings
from tests.admin.helpers import ENV_TOKEN, OPERATOR_TOKEN, READER_TOKEN, Admin, rpc_error

METHODS = [m.name for m in ADMIN_SERVICE.methods]
READ_ONLY = {"ListModels", "GetModel", "ListVersions", "GetVersion", "DownloadVersion",
             "ListEvents", "QueryRequests", "ListUnmatchedFeedback", "ListRuns", "GetRun",
             "ListDatasets", "ListTriggers", "GetTrafficPolicy"}


def test_every_method_of_the_service_has_a_role() -> None:
    assert set(ADMIN_ROLES) == set(METHODS)
    assert {m for m, role in ADMIN_ROLES.items() if role == "reader"} == READ_ONLY
    assert set(ADMIN_ROLES.values()) == {"reader", "operator"}


def test_the_interceptor_refuses_a_table_missing_a_method() -> None:
    authority = TokenAuthority(())
    partial = {k: v for k, v in ADMIN_ROLES.items() if k != "Promote"}
    with pytest.raises(ValueError, match="Promote"):
        AdminInterceptor(authority, roles=partial)
    with pytest.raises(ValueError, match="Extra"):
        AdminInterceptor(authority, roles={**ADMIN_ROLES, "Extra": "reader"})
    with pytest.raises(ValueError, match="root"):
        AdminInterceptor(authority, roles={**ADMIN_ROLES, "Promote": "root"})


def raw_call(channel: grpc.Channel, method: str, token: str | None) -> Any:
    """Call ``method`` with an empty request of the right type, however it streams."""
    descriptor = ADMIN_SERVICE.methods_by_name[method]
    pool = symbol_database.Default()
    request_cls = pool.GetSymbol(descriptor.input_type.full_name)
    response_cls = pool.GetSymbol(descriptor.output_type.full_name)
    path = f"/{ADMIN_SERVICE.full_name}/{method}"
    kinds = {(False, False): channel.unary_unary, (True, False): channel.stream_unary,
             (False, True): channel.unary_stream, (True, True): channel.stream_stream}
    factory = kinds[(descriptor.client_streaming, descriptor.server_streaming)]
    stub = factory(path, request_serializer=request_cls.SerializeToString,
                   response_deserializer=response_cls.FromString)
    request = iter([request_cls()]) if descriptor.client_streaming else request_cls()
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    result = stub(request, metadata=metadata, timeout=30)
    if descriptor.server_streaming:
        return list(result)
    return result


@pytest.mark.parametrize("method", METHODS)
def test_missing_or_wrong_token_is_unauthenticated(channel: grpc.Channel, method: str) -> None:
    for token in (None, "not-a-token"):
        error = rpc_error(raw_call, channel, method, token)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method, token)
    assert "missing 'authorization: Bearer <token>'" in rpc_error(
        raw_call, channel, method, None).details()


@pytest.mark.parametrize("method", METHODS)
def test_reader_may_read_but_not_write(channel: grpc.Channel, method: str) -> None:
    if method in READ_ONLY:
        try:
            raw_call(channel, method, READER_TOKEN)
        except grpc.RpcError as exc:  # an empty request may be invalid, but not refused
            assert exc.code() not in (grpc.StatusCode.UNAUTHENTICATED,
                                      grpc.StatusCode.PERMISSION_DENIED), exc.details()
    else:
        error = rpc_error(raw_call, channel, method, READER_TOKEN)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == "token 'viewer' has role 'reader'; this needs 'operator'"


def test_malformed_authorization_is_unauthenticated(channel: grpc.Channel) -> None:
    stub = Admin(channel).stub
    for value in ("Basic abc", "Bearer", OPERATOR_TOKEN):
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(apb.ListModelsRequest(), metadata=(("authorization", value),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_actor_is_the_token_name_including_env(admin: Admin, name: str,
                                               fraud_onnx: dict[int, bytes]) -> None:
    admin.register(name, fraud_onnx[1])
    admin.register(name, fraud_onnx[7], token=ENV_TOKEN)
    registered = admin.events(name, "version.register")
    assert [(e.version, e.actor) for e in registered] == [(2, "env"), (1, "ops")]
    assert admin.events(name, "model.create")[0].actor == "ops"


def test_health_and_reflection_on_the_admin_port_need_no_token(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert ADMIN_SERVICE.full_name in names


def test_token_authority_compares_every_token() -> None:
    authority = TokenAuthority((TokenSettings(name="a", token="same-prefix-1", role="reader"),
                                TokenSettings(name="b", token="same-prefix-2", role="operator")))
    assert authority.authorize("Bearer same-prefix-2", "operator") == "b"
    assert authority.authorize("bearer same-prefix-1", "reader") == "a"
