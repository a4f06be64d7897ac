"""The ``gateway.admin.v1.AdminService`` servicer: translate, call the facade, translate.

Authentication, roles and error translation are applied to every method by
``gateway.rpc.admin_auth.AdminInterceptor``, which also hands each method an
``AuthorizedContext`` whose ``actor`` is the caller's token name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import InvalidInput
from gateway.pb import admin_pb2 as pb
from gateway.pb import admin_pb2_grpc as pb_grpc
from gateway.rpc import admin_converters as convert
from gateway.rpc import request_log_converters as logged
from gateway.rpc.admin_auth import AuthorizedContext
from gateway.rpc.lifecycle_servicer import LifecycleMethods
from gateway.rpc.traffic_servicer import TrafficMethods
from gateway.traffic_service import TrafficService
from lifecycle.loop_service import LoopService
from lifecycle.registry import ANY
from lifecycle.service import LifecycleService, RequestQuery


class AdminServicer(LifecycleMethods, TrafficMethods, pb_grpc.AdminServiceServicer):
    def __init__(self, service: LifecycleService, *, loop: LoopService | None = None,
                 traffic: TrafficService | None = None) -> None:
        self._service = service
        self._loop = loop
        self._traffic = traffic

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: AuthorizedContext) -> pb.ListModelsResponse:
        models = await self._service.list_models()
        return pb.ListModelsResponse(models=[convert.model(m) for m in models])

    async def GetModel(self, request: pb.GetModelRequest, context: AuthorizedContext) -> pb.Model:
        return convert.model(await self._service.get_model(request.name))

    async def ListVersions(self, request: pb.ListVersionsRequest,
                           context: AuthorizedContext) -> pb.ListVersionsResponse:
        versions = await self._service.list_versions(
            request.model, status=request.status or None, tag=request.tag or None,
            text=request.text or None)
        return pb.ListVersionsResponse(versions=[convert.version(v) for v in versions])

    async def GetVersion(self, request: pb.GetVersionRequest,
                         context: AuthorizedContext) -> pb.ModelVersion:
        return convert.version(await self._service.get_version(request.model, request.version))

    async def RegisterVersion(self, request_iterator: AsyncIterator[pb.RegisterVersionRequest],
                              context: AuthorizedContext) -> pb.RegisterVersionResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("content") != "header":
            raise InvalidInput("RegisterVersion: the first message must carry the header "
                               "(model, description, tags...), the ONNX bytes follow in chunks")

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("content") != "chunk":
                    raise InvalidInput("RegisterVersion: only the first message may carry "
                                       "a header; the others carry chunks")
                yield message.chunk

        registration = await self._service.register_version(
            convert.upload(first.header), chunks(), actor=context.actor)
        return pb.RegisterVersionResponse(
            version=convert.version(registration.version), created=registration.created,
            model_created=registration.model_created)

    async def DownloadVersion(self, request: pb.DownloadVersionRequest,
                              context: AuthorizedContext
                              ) -> AsyncIterator[pb.DownloadVersionResponse]:
        download = await self._service.download(request.model, request.version,
                                                request.chunk_bytes)
        record = download.version
        yield pb.DownloadVersionResponse(info=pb.ArtifactInfo(
            model=record.model, version=record.version, sha256=record.sha256,
            size_bytes=record.size))
        async for chunk in download.chunks:
            yield pb.DownloadVersionResponse(chunk=chunk)

    async def SetAlias(self, request: pb.SetAliasRequest,
                       context: AuthorizedContext) -> pb.AliasChange:
        expected: Any = ANY
        if request.HasField("expected_version"):
            expected = request.expected_version or None
        change = await self._service.set_alias(request.model, request.alias, request.version,
                                               actor=context.actor, expected=expected)
        return convert.alias_change(change)

    async def Promote(self, request: pb.PromoteRequest,
                      context: AuthorizedContext) -> pb.AliasChange:
        change = await self._service.promote(request.model, request.version,
                                             actor=context.actor)
        return convert.alias_change(change)

    async def Rollback(self, request: pb.RollbackRequest,
                       context: AuthorizedContext) -> pb.AliasChange:
        return convert.alias_change(
            await self._service.rollback(request.model, actor=context.actor))

    async def ArchiveVersion(self, request: pb.ArchiveVersionRequest,
                             context: AuthorizedContext) -> pb.ModelVersion:
        info = await self._service.archive(request.model, request.version, actor=context.actor,
                                           reason=request.reason)
        return convert.version(info)

    async def LoadVersion(self, request: pb.LoadVersionRequest,
                          context: AuthorizedContext) -> pb.VersionLoad:
        load = await self._service.load(request.model, request.version, actor=context.actor)
        return convert.version_load(load)

    async def UnloadVersion(self, request: pb.UnloadVersionRequest,
                            context: AuthorizedContext) -> pb.VersionLoad:
        load = await self._service.unload(request.model, request.version, actor=context.actor)
        return convert.version_load(load)

    async def ListEvents(self, request: pb.ListEventsRequest,
                         context: AuthorizedContext) -> pb.ListEventsResponse:
        events = await self._service.list_events(
            model=request.model or None, action=request.action or None, limit=request.limit)
        return pb.ListEventsResponse(events=[convert.event(e) for e in events])

    async def QueryRequests(self, request: pb.QueryRequestsRequest,
                            context: AuthorizedContext) -> AsyncIterator[pb.LoggedRequest]:
        query = RequestQuery(
            model=request.model,
            version=request.version if request.HasField("version") else None,
            since_us=logged.timestamp_us(request.since) if request.HasField("since") else None,
            until_us=logged.timestamp_us(request.until) if request.HasField("until") else None,
            has_feedback=request.has_feedback if request.HasField("has_feedback") else None,
            include_shadow=not request.exclude_shadow, limit=request.limit or None,
        )
        payload = not request.omit_payload
        async for record in self._service.query_requests(query):
            yield logged.logged_request(record, payload=payload)

    async def ListUnmatchedFeedback(self, request: pb.ListUnmatchedFeedbackRequest,
                                    context: AuthorizedContext
                                    ) -> pb.ListUnmatchedFeedbackResponse:
        entries = await self._service.unmatched_feedback(request.model, limit=request.limit)
        return pb.ListUnmatchedFeedbackResponse(feedback=[logged.unmatched(e) for e in entries])

    async def PurgeRequests(self, request: pb.PurgeRequestsRequest,
                            context: AuthorizedContext) -> pb.PurgeRequestsResponse:
        cutoff = request.WhichOneof("cutoff")
        purge = await self._service.purge_requests(
            request.model, actor=context.actor,
            before_us=logged.timestamp_us(request.before) if cutoff == "before" else None,
            older_than_s=request.older_than_days * 86400.0 if cutoff == "older_than_days"
            else None,
        )
        return pb.PurgeRequestsResponse(
            before=logged.timestamp(purge.before_us), requests=purge.requests,
            feedback=purge.feedback, unmatched_feedback=purge.unmatched_feedback)
