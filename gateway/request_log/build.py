"""From settings to an engine: ``[request_log]`` and every ``[models.NAME.logging]``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.request_log.policy import LoggingPolicy
from gateway.request_log.writer import RequestLog, RequestLogConfig, RequestSink
from gateway.settings import MIB, LoggingSettings, Settings

__all__ = ["build_request_log", "logging_policy", "request_log_config"]

DAY_S = 86400.0
MAX_SEGMENT_BYTES = 8 * MIB


def logging_policy(settings: LoggingSettings) -> LoggingPolicy:
    return LoggingPolicy(
        sample_rate=settings.sample_rate, capture_payload=settings.capture_payload,
        max_payload_bytes=settings.max_payload_bytes,
        retention_s=settings.retention_days * DAY_S,
    )


def request_log_config(settings: Settings) -> RequestLogConfig:
    s = settings.request_log
    budget = max(1, int(s.journal_budget_mb * MIB))
    return RequestLogConfig(
        journal_dir=settings.effective_journal_dir,
        queue_max=s.queue_max,
        queue_max_bytes=max(1, int(s.queue_max_mb * MIB)),
        batch_max=s.batch_max,
        flush_interval_s=s.flush_interval_ms / 1000.0,
        # Several segments fit in the budget, so trimming behind the checkpoint frees
        # space long before the budget is reached.
        segment_bytes=max(1, min(MAX_SEGMENT_BYTES, budget // 4)),
        journal_budget_bytes=budget,
    )


def build_request_log(settings: Settings, sink: RequestSink,
                      registry: CollectorRegistry) -> RequestLog:
    """The engine for ``settings`` (not started), its metrics on ``registry``."""
    return RequestLog(
        request_log_config(settings), sink, registry,
        default_policy=logging_policy(settings.request_log.defaults),
        policies={m.name: logging_policy(m.logging) for m in settings.models},
    )
