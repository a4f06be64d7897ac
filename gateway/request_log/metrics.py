"""Prometheus metrics of the request log, on a registry passed in (no globals).

Counters by ``kind`` (``request`` or ``feedback``):

    gateway_request_log_logged_total     inserted into the database straight after journaling
    gateway_request_log_spilled_total    journaled, but left for replay because the database
                                         was failing or behind
    gateway_request_log_replayed_total   inserted from the journal (after a spill, or at start)
    gateway_request_log_dropped_total    lost, by ``reason``: queue_full, journal_full,
                                         stopped (logged after stop), invalid (unencodable),
                                         rejected (refused by the database), error (log()
                                         raised internally), shutdown (journal full at stop)

Every record accepted by ``log()`` ends up as exactly one of logged, replayed or dropped
(once the database is back); a record is spilled and later replayed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RequestLogMetrics"]

BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                 5.0, 10.0)
KINDS = ("request", "feedback")


class RequestLogMetrics:
    """The request log's metrics; children for the hot labels are resolved once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.logged = Counter(
            "gateway_request_log_logged", "Records inserted into the database after journaling.",
            ["kind"], registry=registry,
        )
        self.spilled = Counter(
            "gateway_request_log_spilled",
            "Records journaled but left for replay (database failing or behind).",
            ["kind"], registry=registry,
        )
        self.replayed = Counter(
            "gateway_request_log_replayed", "Records inserted into the database from the journal.",
            ["kind"], registry=registry,
        )
        self.dropped = Counter(
            "gateway_request_log_dropped", "Records lost, by reason.", ["kind", "reason"],
            registry=registry,
        )
        self.sampled_out = Counter(
            "gateway_request_log_sampled_out", "Inferences not logged by the sampling rate.",
            registry=registry,
        )
        self.failed_inserts = Counter(
            "gateway_request_log_failed_inserts",
            "Database insert attempts that failed (the batch stays journaled and is retried).",
            registry=registry,
        )
        self.journal_errors = Counter(
            "gateway_request_log_journal_errors", "Journal writes that failed (disk errors).",
            registry=registry,
        )
        self.truncated_bytes = Counter(
            "gateway_request_log_journal_truncated_bytes",
            "Bytes of torn or corrupt frames cut from the journal at start.", registry=registry,
        )
        self.queue_depth = Gauge(
            "gateway_request_log_queue_depth", "Records waiting in memory for the journal.",
            registry=registry,
        )
        self.queue_bytes = Gauge(
            "gateway_request_log_queue_bytes",
            "Bytes of tensor data held by the records waiting in memory.", registry=registry,
        )
        self.journal_bytes = Gauge(
            "gateway_request_log_journal_bytes", "Bytes of journal segments on disk.",
            registry=registry,
        )
        self.backlog_bytes = Gauge(
            "gateway_request_log_backlog_bytes",
            "Journaled bytes not yet in the database.", registry=registry,
        )
        self.batch_seconds = Histogram(
            "gateway_request_log_batch_seconds",
            "Writer batch latency by stage (journal: encode+write+fsync; insert: database).",
            ["stage"], buckets=BATCH_BUCKETS, registry=registry,
        )
        self.journal_batch = self.batch_seconds.labels("journal")
        self.insert_batch = self.batch_seconds.labels("insert")
        for kind in KINDS:
            for counter in (self.logged, self.spilled, self.replayed):
                counter.labels(kind)
        self.queue_full = {k: self.dropped.labels(k, "queue_full") for k in KINDS}
        self.journal_full = {k: self.dropped.labels(k, "journal_full") for k in KINDS}
