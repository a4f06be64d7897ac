"""Authentication, authorization and error translation for every admin RPC, in one place.

``ADMIN_ROLES`` maps each ``AdminService`` method to the least role that may call it;
``AdminInterceptor`` refuses to start if a method of the service has no entry, and wraps
every method generically: it checks ``authorization: Bearer <token>`` against the role,
hands the servicer an ``AuthorizedContext`` carrying the token's name (the actor recorded
in events), and turns whatever the servicer raises into a status through the one table
in ``gateway.rpc.status``. Methods of other services on the admin port (health,
reflection) pass through untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from gateway.auth import TokenAuthority
from gateway.pb import admin_pb2
from gateway.rpc.status import status_for

ADMIN_SERVICE: ServiceDescriptor = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]

READER, OPERATOR = "reader", "operator"
ADMIN_ROLES: Mapping[str, str] = MappingProxyType({
    "ListModels": READER,
    "GetModel": READER,
    "ListVersions": READER,
    "GetVersion": READER,
    "DownloadVersion": READER,
    "ListEvents": READER,
    "QueryRequests": READER,
    "ListUnmatchedFeedback": READER,
    "ListRuns": READER,
    "GetRun": READER,
    "ListDatasets": READER,
    "ListTriggers": READER,
    "GetTrafficPolicy": READER,
    "RegisterVersion": OPERATOR,
    "SetAlias": OPERATOR,
    "Promote": OPERATOR,
    "Rollback": OPERATOR,
    "ArchiveVersion": OPERATOR,
    "LoadVersion": OPERATOR,
    "UnloadVersion": OPERATOR,
    "PurgeRequests": OPERATOR,
    "Retrain": OPERATOR,
    "SetTriggers": OPERATOR,
    "SetTrafficPolicy": OPERATOR,
    "ClearTrafficPolicy": OPERATOR,
    "StartCanary": OPERATOR,
    "StartBandit": OPERATOR,
})
"""AdminService method name → the least role allowed (``operator`` may call everything)."""


class AuthorizedContext:
    """The call's ``ServicerContext`` plus ``actor``, the name of the token that passed."""

    def __init__(self, context: grpc.aio.ServicerContext, actor: str) -> None:
        self._context = context
        self.actor = actor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class AdminInterceptor(grpc.aio.ServerInterceptor):
    """Apply ``roles`` to every method of ``service``; see the module docstring.

    Raises ``ValueError`` at construction when a method of ``service`` has no role, or a
    role names no method or an unknown role.
    """

    def __init__(
        self,
        authority: TokenAuthority,
        *,
        service: ServiceDescriptor = ADMIN_SERVICE,
        roles: Mapping[str, str] = ADMIN_ROLES,
    ) -> None:
        methods = {m.name for m in service.methods}
        if methods != set(roles):
            raise ValueError(
                f"{service.full_name}: methods without a role {sorted(methods - set(roles))}, "
                f"roles without a method {sorted(set(roles) - methods)}")
        unknown = {r for r in roles.values() if r not in (READER, OPERATOR)}
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}")
        self._authority = authority
        self._roles = {f"/{service.full_name}/{name}": role for name, role in roles.items()}
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        role = self._roles.get(method)
        if handler is None or role is None:
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(handler, role)
        return wrapped

    def _authorize(self, context: grpc.aio.ServicerContext, role: str) -> AuthorizedContext:
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
        return AuthorizedContext(context, self._authority.authorize(authorization, role))

    def _wrap(self, handler: grpc.RpcMethodHandler, role: str) -> grpc.RpcMethodHandler:
        serializers = {"request_deserializer": handler.request_deserializer,
                       "response_serializer": handler.response_serializer}
        authorize = self._authorize

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await unary(request, authorize(context, role))
                except Exception as exc:
                    await _abort(context, exc)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **serializers)

        if handler.stream_unary is not None:
            client_stream = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await client_stream(requests, authorize(context, role))
                except Exception as exc:
                    await _abort(context, exc)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)

        streaming = handler.unary_stream or handler.stream_stream
        if streaming is None:
            raise ValueError("a method handler without a behavior")

        async def server_stream(request: Any, context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[Any]:
            try:
                async for response in streaming(request, authorize(context, role)):
                    yield response
            except Exception as exc:
                await _abort(context, exc)

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(server_stream, **serializers)
        return grpc.stream_stream_rpc_method_handler(server_stream, **serializers)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    code, message = status_for(exc)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover
