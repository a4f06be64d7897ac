"""The ``gateway.feedback.v1.FeedbackService`` servicer: translate, call the intake, translate.

Errors become status through the one table (``gateway.rpc.status``); in the stream form
each message is judged on its own and rejections are reported, never fatal to the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from gateway.pb import feedback_pb2 as pb
from gateway.pb import feedback_pb2_grpc as pb_grpc
from gateway.request_log.feedback import FeedbackIntake
from gateway.rpc.request_log_converters import feedback_fields
from gateway.rpc.status import status_for

FEEDBACK_SERVICE = pb.DESCRIPTOR.services_by_name["FeedbackService"].full_name
MAX_REJECTIONS = 1000
"""Rejections listed in a stream's summary (all are counted)."""


class FeedbackServicer(pb_grpc.FeedbackServiceServicer):
    def __init__(self, intake: FeedbackIntake) -> None:
        self._intake = intake

    async def SubmitFeedback(self, request: pb.Feedback,
                             context: grpc.aio.ServicerContext) -> pb.SubmitFeedbackResponse:
        try:
            feedback_id = self._intake.submit(*feedback_fields(request))
        except Exception as exc:
            code, message = status_for(exc, request.request_id)
            await context.abort(code, message)
            raise
        return pb.SubmitFeedbackResponse(feedback_id=feedback_id)

    async def StreamFeedback(self, request_iterator: AsyncIterator[pb.Feedback],
                             context: grpc.aio.ServicerContext) -> pb.StreamFeedbackResponse:
        response = pb.StreamFeedbackResponse()
        index = 0
        async for request in request_iterator:
            try:
                self._intake.submit(*feedback_fields(request))
                response.accepted += 1
            except Exception as exc:
                code, message = status_for(exc, request.request_id)
                response.rejected += 1
                if len(response.rejections) < MAX_REJECTIONS:
                    response.rejections.add(index=index, code=code.name, message=message,
                                            request_id=request.request_id)
            index += 1
        return response
