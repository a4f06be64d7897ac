"""The request log: every inference and every ground-truth label captured off the hot path.

Public names:

- ``RequestLog``, ``RequestLogConfig``, ``RequestSink`` — the engine (``writer``): a
  never-blocking ``log()``, a fsynced journal, batched idempotent inserts; its delivery
  guarantees are stated in ``gateway.request_log.writer``.
- ``RequestRecord``, ``FeedbackRecord`` — what the serving path hands in; ``RecordIds`` and
  ``new_record_id`` make their ids.
- ``LoggingPolicy`` — per-model sampling, payload capture, payload limit, retention.
- ``Label``, ``Tensor`` — re-exported from ``lifecycle.request_records``.
- ``RequestLogMetrics``, ``Journal``, ``Recovery`` — metrics and the journal itself.

Wiring (imported from their modules): ``build.build_request_log`` turns settings into an
engine; ``feedback.FeedbackIntake`` is the core of the FeedbackService.
"""

from __future__ import annotations

from gateway.request_log.journal import Journal, JournalFull, Recovery
from gateway.request_log.metrics import RequestLogMetrics
from gateway.request_log.policy import LoggingPolicy
from gateway.request_log.record import FeedbackRecord, RecordIds, RequestRecord, new_record_id
from gateway.request_log.writer import RequestLog, RequestLogConfig, RequestSink
from lifecycle.request_records import Label, Tensor

__all__ = [
    "FeedbackRecord",
    "Journal",
    "JournalFull",
    "Label",
    "LoggingPolicy",
    "RecordIds",
    "Recovery",
    "RequestLog",
    "RequestLogConfig",
    "RequestLogMetrics",
    "RequestRecord",
    "RequestSink",
    "Tensor",
    "new_record_id",
]
