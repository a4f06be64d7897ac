"""The traffic part of the admin service: a mixin of ``AdminServicer`` (one service, one
interceptor applying roles and the error table); translate, call ``TrafficService``,
translate back."""

from __future__ import annotations

from gateway.pb import admin_pb2 as pb
from gateway.rpc import traffic_converters as convert
from gateway.rpc.admin_auth import AuthorizedContext
from gateway.traffic_service import TrafficService
from lifecycle.errors import PreconditionError

__all__ = ["TrafficMethods"]


class TrafficMethods:
    """Needs ``self._traffic`` (a ``TrafficService``, or None when the gateway has none)."""

    _traffic: TrafficService | None

    def _traffic_service(self) -> TrafficService:
        if self._traffic is None:
            raise PreconditionError("this gateway serves no traffic policies")
        return self._traffic

    async def GetTrafficPolicy(self, request: pb.GetTrafficPolicyRequest,
                               context: AuthorizedContext) -> pb.TrafficPolicyStatus:
        return convert.status(await self._traffic_service().status(request.model))

    async def SetTrafficPolicy(self, request: pb.SetTrafficPolicyRequest,
                               context: AuthorizedContext) -> pb.TrafficPolicyStatus:
        result = await self._traffic_service().set_split(
            request.model, convert.split_weights(request), sticky=request.sticky,
            shadows=convert.shadows(request.shadows), actor=context.actor)
        return convert.status(result)

    async def ClearTrafficPolicy(self, request: pb.ClearTrafficPolicyRequest,
                                 context: AuthorizedContext) -> pb.TrafficPolicyStatus:
        return convert.status(await self._traffic_service().clear(request.model,
                                                                  actor=context.actor))

    async def StartCanary(self, request: pb.StartCanaryRequest,
                          context: AuthorizedContext) -> pb.TrafficPolicyStatus:
        result = await self._traffic_service().start_canary(
            request.model, convert.canary_spec(request), sticky=not request.not_sticky,
            shadows=convert.shadows(request.shadows), actor=context.actor)
        return convert.status(result)

    async def StartBandit(self, request: pb.StartBanditRequest,
                          context: AuthorizedContext) -> pb.TrafficPolicyStatus:
        result = await self._traffic_service().start_bandit(
            request.model, convert.bandit_spec(request), sticky=request.sticky,
            actor=context.actor)
        return convert.status(result)
