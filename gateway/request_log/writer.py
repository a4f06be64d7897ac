"""The request-log engine: a never-blocking enqueue, a journal thread, a database thread.

    log() ──► bounded queue ──► journal thread: encode, append frames, fsync ──► hand-off
                                                                 │ (bounded)      │
                                                     journal on disk ◄── replay ── database
                                                                                  thread

Guarantees (``flush_interval_s`` = F, default 50 ms):

- ``log()``/``log_feedback()`` never block and never raise: they append a reference to a
  bounded queue (``queue_max`` records, ``queue_max_bytes`` of tensor data) or count a
  drop. Sampling and the payload policy are applied there (a payload over the model's
  ``max_payload_bytes``, or not captured, is let go at once); tensors are encoded by the
  journal thread.
- Journal first: every batch (``batch_max`` records, or what arrived within F) is
  appended to the journal and fsynced before it is inserted; the journal is trimmed only
  after the insert committed. The database thread is separate, so a slow or failing
  database never delays journaling: it only grows the journal, which the database thread
  replays in order when the database answers again (retries back off from
  ``retry_initial_s`` to ``retry_max_s``). Batches waiting for the database are not held
  in memory beyond ``handoff_batches``: the rest is read back from the journal.
- kill -9 loses at most the records not yet in an fsynced batch: those logged within
  about F plus one batch's encode+write+fsync time before the kill. Nothing is
  duplicated: inserts are idempotent by ``record_id``/``feedback_id``.
- ``stop()`` (SIGTERM) journals everything queued and inserts it; if the database is
  down it stays in the journal and ``start()`` replays it. Nothing is lost, unless the
  journal is also at its budget (see the drop policy).
- Drop policy (bounded memory): when the journal reaches ``journal_budget_bytes`` the
  journal thread stops taking records from the queue, the queue fills, and new records
  are dropped at ``log()`` (*newest dropped*), counted as ``journal_full`` (``queue_full``
  when the queue is full for any other reason). Memory holds at most ``queue_max``
  records and ``queue_max_bytes`` of their tensors (numpy ``nbytes``; a BYTES tensor
  counts its element pointers, not its strings) plus ``1 + handoff_batches`` encoded
  batches.

Feedback goes through the same queue, journal and inserts (its own record kind).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from gateway.request_log.journal import Journal, JournalFull, Recovery
from gateway.request_log.metrics import RequestLogMetrics
from gateway.request_log.policy import LoggingPolicy
from gateway.request_log.record import (
    FeedbackRecord,
    RecordIds,
    RequestRecord,
    decode_entry,
    encode_entry,
    to_feedback_entry,
    to_request_entry,
)
from lifecycle.request_records import FeedbackEntry, RequestEntry, Tensor, TensorSource

__all__ = ["RequestLog", "RequestLogConfig", "RequestSink"]

log = logging.getLogger("gateway.request_log")

Entry = RequestEntry | FeedbackEntry


class RequestSink(Protocol):
    """Where batches go (``lifecycle.request_store.RequestStore``). ``insert`` must be
    idempotent by id, raise ``ConnectionError`` (e.g. ``StorageUnavailable``) when the
    database cannot be reached, and any other exception for a batch it refuses."""

    def insert(
        self, requests: Sequence[RequestEntry] = (), feedback: Sequence[FeedbackEntry] = ()
    ) -> None: ...


@dataclass(frozen=True, kw_only=True)
class RequestLogConfig:
    journal_dir: Path
    queue_max: int = 10_000
    queue_max_bytes: int = 64 << 20
    batch_max: int = 500
    flush_interval_s: float = 0.05
    segment_bytes: int = 8 << 20
    journal_budget_bytes: int = 512 << 20
    handoff_batches: int = 4
    retry_initial_s: float = 0.05
    retry_max_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("queue_max", "queue_max_bytes", "batch_max", "segment_bytes",
                     "handoff_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.journal_budget_bytes < self.segment_bytes:
            raise ValueError(
                f"journal_budget_bytes ({self.journal_budget_bytes}) must be at least "
                f"segment_bytes ({self.segment_bytes})"
            )
        for name in ("flush_interval_s", "retry_initial_s", "retry_max_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(slots=True)
class _Batch:
    start: int
    end: int
    entries: list[Entry]


def _now_us() -> int:
    return time.time_ns() // 1000


def _payload_bytes(tensors: Sequence[Tensor | TensorSource]) -> int:
    total = 0
    for item in tensors:
        array = getattr(item, "array", None)
        total += len(item.data) if array is None else array.nbytes  # type: ignore[union-attr]
    return total


def _kinds(entries: Sequence[Entry]) -> tuple[int, int]:
    requests = sum(1 for e in entries if isinstance(e, RequestEntry))
    return requests, len(entries) - requests


class RequestLog:
    """The engine; see the module docstring. ``start()`` once, then ``log`` from any
    thread, then ``stop()``. Metrics are registered on ``registry`` (``self.metrics``).

    ``policies`` maps model names to their ``LoggingPolicy`` (``default_policy`` for the
    rest); ``rng`` draws the sampling; ``clock_us`` stamps records (epoch µs).
    """

    def __init__(
        self,
        config: RequestLogConfig,
        sink: RequestSink,
        registry: CollectorRegistry,
        *,
        default_policy: LoggingPolicy | None = None,
        policies: Mapping[str, LoggingPolicy] | None = None,
        rng: random.Random | None = None,
        clock_us: Callable[[], int] = _now_us,
    ) -> None:
        self.config = config
        self.metrics = RequestLogMetrics(registry)
        self._sink = sink
        self._default_policy = default_policy or LoggingPolicy()
        self._policies: dict[str, LoggingPolicy] = dict(policies or {})
        self._rng = rng or random.Random()
        self._clock_us = clock_us
        self._ids = RecordIds()
        self._journal = Journal(
            config.journal_dir, segment_bytes=config.segment_bytes,
            budget_bytes=config.journal_budget_bytes,
        )
        # Requests travel with the policy in force when they were logged, and the bytes
        # of tensor data they hold.
        self._queue: deque[tuple[RequestRecord, LoggingPolicy, int] | FeedbackRecord] = deque()
        self._queue_max = config.queue_max
        self._queue_max_bytes = config.queue_max_bytes
        # Bytes queued = in - out; each counter has one writer (log() callers, the journal
        # thread), so neither needs a lock.
        self._bytes_in = 0
        self._bytes_out = 0
        self._batch_max = config.batch_max
        self._flush_s = config.flush_interval_s
        self._wake = threading.Event()
        # Guards the hand-off inbox and the flags below; notified on every progress.
        self._progress = threading.Condition()
        self._inbox: deque[_Batch] = deque()
        self._accepting = False
        self._stopping = False
        self._stop_deadline = float("inf")
        self._journal_busy = False
        # Set from just before an append until its batch is in the inbox: the database
        # thread then waits for the hand-off instead of reading the batch back from disk.
        self._handing_off = False
        self._journal_full = False
        self._journal_done = False
        self._db_done = False
        self._db_down = False
        self._stopped: bool | None = None
        self._threads: list[threading.Thread] = []
        m = self.metrics
        self._sampled_out = m.sampled_out
        self._queue_full = m.queue_full
        self._journal_full_drop = m.journal_full

    # ------------------------------------------------------------------ policy

    def policy(self, model: str) -> LoggingPolicy:
        return self._policies.get(model, self._default_policy)

    def set_policy(self, model: str, policy: LoggingPolicy | None) -> None:
        """Set (or with None, reset to the default) a model's policy; thread-safe."""
        policies = dict(self._policies)
        if policy is None:
            policies.pop(model, None)
        else:
            policies[model] = policy
        # Swapped whole: the serving path reads the dict without a lock.
        self._policies = policies

    # ------------------------------------------------------------------ serving path

    def log(self, record: RequestRecord) -> bool:
        """Enqueue one inference; True if accepted. Never blocks, never raises.

        Applies the model's sampling rate and payload policy (a payload not captured or
        over ``max_payload_bytes`` is released here: ``record.inputs``/``outputs`` are
        emptied, ``payload_dropped`` set for the second case), and fills
        ``record.timestamp_us`` and ``record.record_id`` when empty (so the caller can
        read the id afterwards). Should be called from one thread at a time (the event
        loop's): the byte count of the queue is not locked."""
        try:
            policy = self._policies.get(record.model, self._default_policy)
            if policy.sample_rate < 1.0 and not policy.should_log(self._rng):
                self._sampled_out.inc()
                return False
            size = 0
            if policy.capture_payload and not record.payload_dropped:
                size = _payload_bytes(record.inputs) + _payload_bytes(record.outputs)
                if size > policy.max_payload_bytes:
                    record.payload_dropped = True
                    record.inputs = record.outputs = ()
                    size = 0
            elif record.inputs or record.outputs:
                record.inputs = record.outputs = ()
            if not record.timestamp_us:
                record.timestamp_us = self._clock_us()
            if not record.record_id:
                record.record_id = self._ids.next(record.timestamp_us)
            queue = self._queue
            if (len(queue) >= self._queue_max or not self._accepting
                    or (size and self._bytes_in - self._bytes_out + size > self._queue_max_bytes)):
                self._count_refused("request")
                return False
            self._bytes_in += size
            queue.append((record, policy, size))
            if len(queue) >= self._batch_max and not self._wake.is_set():
                self._wake.set()
            return True
        except Exception:
            self._count_error("request")
            return False

    def log_feedback(self, record: FeedbackRecord) -> bool:
        """Enqueue one feedback submission; True if accepted. Never blocks, never raises.

        Fills ``received_at_us`` and ``feedback_id`` when empty; never sampled."""
        try:
            if not record.received_at_us:
                record.received_at_us = self._clock_us()
            if not record.feedback_id:
                record.feedback_id = self._ids.next(record.received_at_us)
            queue = self._queue
            if len(queue) >= self._queue_max or not self._accepting:
                self._count_refused("feedback")
                return False
            queue.append(record)
            if len(queue) >= self._batch_max and not self._wake.is_set():
                self._wake.set()
            return True
        except Exception:
            self._count_error("feedback")
            return False

    def _count_refused(self, kind: str) -> None:
        if not self._accepting:
            self.metrics.dropped.labels(kind, "stopped").inc()
        elif self._journal_full:
            self._journal_full_drop[kind].inc()
        else:
            self._queue_full[kind].inc()

    def _count_error(self, kind: str) -> None:
        try:
            self.metrics.dropped.labels(kind, "error").inc()
            log.exception("request log: a record could not be enqueued")
        except Exception:  # noqa: S110 - the serving path must never see an exception
            pass

    # ------------------------------------------------------------------ state

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queue_bytes(self) -> int:
        """Bytes of tensor data held by the queued records."""
        return self._bytes_in - self._bytes_out

    @property
    def journal_bytes(self) -> int:
        return self._journal.size_bytes

    @property
    def backlog_bytes(self) -> int:
        """Journaled bytes not yet committed to the database."""
        return max(0, self._journal.end - self._journal.committed)

    def _idle(self) -> bool:
        return (not self._queue and not self._journal_busy
                and self._journal.committed >= self._journal.end)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Recovery:
        """Recover the journal (cutting torn frames), then start both threads; whatever the
        journal holds past its checkpoint is replayed into the database in the background.
        Raises ``OSError`` when the journal directory is unusable."""
        if self._threads:
            raise RuntimeError("RequestLog.start() called twice")
        recovery = self._journal.open()
        m = self.metrics
        m.truncated_bytes.inc(recovery.truncated_bytes)
        m.queue_depth.set_function(lambda: len(self._queue))
        m.queue_bytes.set_function(lambda: self.queue_bytes)
        m.journal_bytes.set_function(lambda: self._journal.size_bytes)
        m.backlog_bytes.set_function(lambda: self.backlog_bytes)
        self._accepting = True
        # Daemon threads: an insert stuck in the database must not hold the process at
        # exit; its records are in the journal.
        self._threads = [
            threading.Thread(target=self._journal_loop, name="request-log-journal", daemon=True),
            threading.Thread(target=self._db_loop, name="request-log-db", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if recovery.pending_frames:
            log.info("request log: replaying the journal", extra={
                "event": "journal_replay", "records": recovery.pending_frames})
        return recovery

    def flush(self, timeout: float) -> bool:
        """Wait until every record accepted so far is in the database; False on timeout."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._progress:
            while not self._idle():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._db_done:
                    return self._idle()
                self._progress.wait(min(remaining, self._flush_s))
                self._wake.set()
        return True

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop accepting, journal what is queued, insert what the database takes within
        ``timeout`` seconds; True when every record is in the database and the journal was
        trimmed. Otherwise the rest stays journaled for the next ``start()`` (and only
        records that found the journal at its budget are dropped, counted)."""
        if self._stopped is not None:
            return self._stopped
        if not self._threads:
            self._stopped = True
            return True
        deadline = time.monotonic() + timeout
        self._accepting = False
        with self._progress:
            self._stop_deadline = deadline
            self._stopping = True
            self._progress.notify_all()
        self._wake.set()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = any(thread.is_alive() for thread in self._threads)
        if not alive and self._queue:
            # log() calls that raced with the flag above.
            requests = sum(1 for r in self._queue if isinstance(r, tuple))
            self._bytes_out += sum(r[2] for r in self._queue if isinstance(r, tuple))
            self._queue.clear()
            self._count_dropped("stopped", requests, 0)
        complete = not alive and self._journal.committed >= self._journal.end
        if not alive:
            self._journal.close(trim=complete)
        if not complete:
            log.warning("request log: stopped with records left in the journal", extra={
                "event": "stopped_with_backlog", "backlog_bytes": self.backlog_bytes})
        self._stopped = complete
        return complete

    # ------------------------------------------------------------------ journal thread

    def _journal_loop(self) -> None:
        try:
            self._journal_run()
        except Exception:
            log.exception("request log: the journal thread died")
        finally:
            with self._progress:
                self._journal_done = True
                self._journal_busy = False
                self._handing_off = False
                self._progress.notify_all()

    def _journal_run(self) -> None:
        queue, wake, journal = self._queue, self._wake, self._journal
        pending: tuple[list[Entry], list[bytes]] | None = None
        started = 0.0
        while True:
            if pending is None:
                if len(queue) < self._batch_max and not self._stopping:
                    wake.wait(self._flush_s)
                    wake.clear()
                self._journal_busy = True
                count = min(len(queue), self._batch_max)
                if count == 0:
                    self._journal_busy = False
                    if self._stopping:
                        return
                    continue
                started = time.monotonic()
                items = [queue.popleft() for _ in range(count)]
                self._bytes_out += sum(item[2] for item in items if isinstance(item, tuple))
                pending = self._encode(items)
                if not pending[0]:
                    pending = None
                    continue
            entries, payloads = pending
            self._handing_off = True
            try:
                start, end = journal.append(payloads)
            except (JournalFull, OSError) as err:
                self._handing_off = False
                if isinstance(err, OSError):
                    self.metrics.journal_errors.inc()
                    if not self._journal_full:
                        log.error("request log: journal write failed, retrying", extra={
                            "event": "journal_error", "reason": str(err)})
                self._journal_full = True
                if self._stopping and (self._db_done or time.monotonic() >= self._stop_deadline):
                    rest = list(queue)
                    queue.clear()
                    self._bytes_out += sum(r[2] for r in rest if isinstance(r, tuple))
                    rest_requests = sum(1 for r in rest if isinstance(r, tuple))
                    requests, feedback = _kinds(entries)
                    self._count_dropped("shutdown", requests + rest_requests,
                                        feedback + len(rest) - rest_requests)
                    return
                journal.wait_for_space(self._flush_s)
                continue
            self._journal_full = False
            self.metrics.journal_batch.observe(time.monotonic() - started)
            self._handoff(_Batch(start, end, entries))
            pending = None

    def _encode(self, items: list[tuple[RequestRecord, LoggingPolicy, int] | FeedbackRecord]
                ) -> tuple[list[Entry], list[bytes]]:
        entries: list[Entry] = []
        payloads: list[bytes] = []
        for item in items:
            record: RequestRecord | FeedbackRecord
            try:
                if isinstance(item, tuple):
                    record, policy, _ = item
                    entry: Entry = to_request_entry(record, policy)
                else:
                    record = item
                    entry = to_feedback_entry(record)
                payloads.append(encode_entry(entry))
                entries.append(entry)
            except Exception as err:
                kind = "request" if isinstance(item, tuple) else "feedback"
                self.metrics.dropped.labels(kind, "invalid").inc()
                log.warning("request log: record cannot be encoded", extra={
                    "event": "record_invalid", "model": record.model,
                    "request_id": record.request_id, "reason": f"{type(err).__name__}: {err}"})
        return entries, payloads

    def _handoff(self, batch: _Batch) -> None:
        with self._progress:
            self._journal_busy = False
            self._handing_off = False
            if len(self._inbox) < self.config.handoff_batches:
                self._inbox.append(batch)
            else:
                self._count_spilled(batch.entries)
            self._progress.notify_all()

    # ------------------------------------------------------------------ database thread

    def _db_loop(self) -> None:
        try:
            self._db_run()
        except Exception:
            log.exception("request log: the database thread died; records stay journaled")
        finally:
            with self._progress:
                self._db_done = True
                self._progress.notify_all()

    def _db_run(self) -> None:
        journal = self._journal
        committed = journal.committed
        retry_at = 0.0
        backoff = self.config.retry_initial_s
        while True:
            with self._progress:
                inbox = self._inbox
                while inbox and inbox[0].end <= committed:
                    inbox.popleft()
                head = inbox[0] if inbox else None
                end = journal.end
                if head is None and (committed >= end or self._handing_off):
                    if self._journal_done:
                        return
                    self._progress.notify_all()
                    self._progress.wait(self._flush_s)
                    continue
                wait = retry_at - time.monotonic()
                if wait > 0 and not self._stopping:
                    self._progress.wait(wait)
                    continue
            replay = head is None or head.start != committed
            if not replay and head is not None:
                entries, position = head.entries, head.end
            else:
                limit = end
                if head is not None:
                    limit = head.start if head.start > committed else head.end
                payloads, position = journal.read(committed, limit, self._batch_max)
                entries = self._decode(payloads)
            started = time.monotonic()
            if self._insert(entries):
                self.metrics.insert_batch.observe(time.monotonic() - started)
                committed = position
                journal.commit(position)
                requests, feedback = _kinds(entries)
                counter = self.metrics.replayed if replay else self.metrics.logged
                counter.labels("request").inc(requests)
                counter.labels("feedback").inc(feedback)
                retry_at, backoff = 0.0, self.config.retry_initial_s
                if self._db_down:
                    self._db_down = False
                    log.info("request log: database back", extra={"event": "db_recovered"})
                with self._progress:
                    self._progress.notify_all()
                continue
            self.metrics.failed_inserts.inc()
            with self._progress:
                for batch in self._inbox:
                    self._count_spilled(batch.entries)
                self._inbox.clear()
                stopping = self._stopping
            if stopping:
                return
            retry_at = time.monotonic() + backoff
            backoff = min(backoff * 2, self.config.retry_max_s)

    def _decode(self, payloads: list[bytes]) -> list[Entry]:
        entries: list[Entry] = []
        for payload in payloads:
            try:
                entries.append(decode_entry(payload))
            except ValueError as err:
                self.metrics.dropped.labels("request", "invalid").inc()
                log.error("request log: malformed journal record skipped", extra={
                    "event": "journal_record_invalid", "reason": str(err)})
        return entries

    def _insert(self, entries: list[Entry]) -> bool:
        """Insert a batch; False when the database is unreachable (retry later)."""
        requests = [e for e in entries if isinstance(e, RequestEntry)]
        feedback = [e for e in entries if isinstance(e, FeedbackEntry)]
        try:
            self._sink.insert(requests, feedback)
            return True
        except ConnectionError as err:
            if not self._db_down:
                self._db_down = True
                log.warning("request log: database unavailable, records stay journaled",
                            extra={"event": "db_unavailable", "reason": str(err)})
            return False
        except Exception:
            log.exception("request log: the database refused a batch; inserting one by one")
        # Isolate the records the database refuses, so one cannot block the journal.
        for entry in entries:
            try:
                if isinstance(entry, RequestEntry):
                    self._sink.insert([entry], ())
                else:
                    self._sink.insert((), [entry])
            except ConnectionError:
                return False
            except Exception as err:
                kind = "request" if isinstance(entry, RequestEntry) else "feedback"
                self.metrics.dropped.labels(kind, "rejected").inc()
                log.error("request log: the database refused a record", extra={
                    "event": "record_rejected", "model": entry.model,
                    "request_id": entry.request_id, "reason": f"{type(err).__name__}: {err}"})
        return True

    # ------------------------------------------------------------------ accounting

    def _count_spilled(self, entries: Sequence[Entry]) -> None:
        requests, feedback = _kinds(entries)
        self.metrics.spilled.labels("request").inc(requests)
        self.metrics.spilled.labels("feedback").inc(feedback)

    def _count_dropped(self, reason: str, requests: int, feedback: int) -> None:
        if requests:
            self.metrics.dropped.labels("request", reason).inc(requests)
        if feedback:
            self.metrics.dropped.labels("feedback", reason).inc(feedback)
