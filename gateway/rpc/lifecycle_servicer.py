"""The lifecycle's part of the admin service: runs, datasets, retrain, triggers.

A mixin of ``gateway.rpc.admin_servicer.AdminServicer`` (one gRPC service, one
interceptor applying roles and the error table); each method translates, calls
``lifecycle.loop_service.LoopService`` and translates back.
"""

from __future__ import annotations

from gateway.pb import admin_pb2 as pb
from gateway.rpc import lifecycle_converters as convert
from gateway.rpc.admin_auth import AuthorizedContext
from lifecycle.errors import PreconditionError
from lifecycle.loop_service import LoopService

__all__ = ["LifecycleMethods"]


class LifecycleMethods:
    """Needs ``self._loop`` (a ``LoopService``, or None when the gateway has none)."""

    _loop: LoopService | None

    def _loop_service(self) -> LoopService:
        if self._loop is None:
            raise PreconditionError("this gateway has no lifecycle")
        return self._loop

    async def ListRuns(self, request: pb.ListRunsRequest,
                       context: AuthorizedContext) -> pb.ListRunsResponse:
        runs = await self._loop_service().list_runs(
            request.model or None, status=request.status or None, limit=request.limit)
        return pb.ListRunsResponse(runs=[convert.run(r) for r in runs])

    async def GetRun(self, request: pb.GetRunRequest, context: AuthorizedContext) -> pb.Run:
        return convert.run(await self._loop_service().get_run(request.id))

    async def ListDatasets(self, request: pb.ListDatasetsRequest,
                           context: AuthorizedContext) -> pb.ListDatasetsResponse:
        datasets = await self._loop_service().list_datasets(request.model, limit=request.limit)
        return pb.ListDatasetsResponse(datasets=[convert.dataset(d) for d in datasets])

    async def Retrain(self, request: pb.RetrainRequest, context: AuthorizedContext) -> pb.Run:
        run = await self._loop_service().retrain(request.model, actor=context.actor,
                                                 reason=request.reason)
        return convert.run(run)

    async def ListTriggers(self, request: pb.ListTriggersRequest,
                           context: AuthorizedContext) -> pb.TriggerList:
        return convert.trigger_list(await self._loop_service().list_triggers(request.model))

    async def SetTriggers(self, request: pb.SetTriggersRequest,
                          context: AuthorizedContext) -> pb.TriggerList:
        listing = await self._loop_service().set_triggers(
            request.model, convert.trigger_specs(request.triggers), actor=context.actor)
        return convert.trigger_list(listing)
