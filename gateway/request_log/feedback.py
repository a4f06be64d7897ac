"""Ground-truth intake: check one submission and hand it to the request log.

The FeedbackService's servicer translates protobuf into a call here; nothing here knows
gRPC. Feedback takes the same path as inference records (queue → fsynced journal →
idempotent insert), so it has the same delivery guarantees; how it joins its inference is
the store's rule (``lifecycle.request_store``).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import FailedPrecondition, InvalidInput, Unavailable
from gateway.request_log.record import FeedbackRecord
from gateway.request_log.writer import RequestLog
from lifecycle.request_records import Label

__all__ = ["FeedbackIntake"]


class FeedbackIntake:
    """``check_model`` raises ``ModelNotFound`` for a model this gateway does not know
    (it must be cheap: it runs for every submission). ``request_log`` is None when request
    logging is disabled."""

    def __init__(self, request_log: RequestLog | None,
                 check_model: Callable[[str], object]) -> None:
        self._log = request_log
        self._check_model = check_model

    def submit(self, model: str, request_id: str, label: Label,
               timestamp_us: int | None = None) -> str:
        """Accept one label; returns its feedback id. Never blocks.

        Raises ``InvalidInput`` (empty model or request id), ``ModelNotFound``,
        ``Unavailable`` (the request log's queue is full or it is stopping: retry) or
        ``FailedPrecondition`` (request logging is disabled).
        """
        if self._log is None:
            raise FailedPrecondition(
                "request logging is disabled ([request_log] enabled = false): feedback "
                "cannot be stored"
            )
        if not model:
            raise InvalidInput("model: expected the name of the model that served the "
                               "request, got an empty string")
        self._check_model(model)
        if not request_id:
            raise InvalidInput("request_id: expected the id of the inference (the id of its "
                               "ModelInferResponse), got an empty string")
        record = FeedbackRecord(model, request_id, label, timestamp_us)
        if not self._log.log_feedback(record):
            raise Unavailable("the request log cannot take feedback now (its queue is full "
                              "or the gateway is stopping): retry later")
        return record.feedback_id
