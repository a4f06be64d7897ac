"""Dynamic batching for one loaded version, with Triton's semantics.

Requests queue on the event loop. When an execution slot is free, the queue's head leaves
as one batch as soon as its rows add up to a preferred batch size (the largest reachable
one) or to the largest preferred size (``max_batch_size`` when none is configured), as soon
as the next request cannot join it (too many rows, other non-batch dims), or once its
oldest request has waited ``max_queue_delay_us`` (at once when that is 0). While every
slot is busy the queue grows, so batches grow with the load. A request with more rows than
``max_batch_size`` passes through: it runs alone, without waiting.

A batch's inputs are concatenated along axis 0, the session runs once (in the inference
pool; inline on the loop for versions fast enough to run there), and each request gets
back exactly its own rows of the outputs it asked for. An error fails every member.

Everything here runs on the event loop thread, except ``_execute`` (numpy and onnxruntime
on arrays no other thread touches).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from functools import partial

import numpy as np

from gateway.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    ModelLoadError,
    Overloaded,
)
from gateway.runtime import OnnxModel
from gateway.settings import BatchingSettings
from gateway.stats import VersionStats

__all__ = ["Batcher", "BatchResult", "check_batchable"]

log = logging.getLogger("gateway.batching")

BatchResult = tuple[int, list[np.ndarray]]
"""``time.perf_counter_ns()`` when the batch's run started, and the request's outputs."""

# asyncio may run a timer up to its clock resolution early; a request this close to its
# delay counts as due rather than re-arming a timer for a few microseconds.
_SLACK_NS = 50_000


class _Member:
    """One queued request."""

    __slots__ = ("deadline", "enqueued_ns", "feeds", "future", "key", "picks", "request_id",
                 "rows")

    def __init__(self, feeds: dict[str, np.ndarray], rows: int, key: object,
                 picks: Sequence[int], future: asyncio.Future[BatchResult], enqueued_ns: int,
                 deadline: float | None, request_id: str) -> None:
        self.feeds = feeds
        self.rows = rows
        self.key = key
        self.picks = picks
        self.future = future
        self.enqueued_ns = enqueued_ns
        self.deadline = deadline
        self.request_id = request_id


class _Executed:
    """What ``_execute`` hands back to the loop."""

    __slots__ = ("input_ns", "infer_ns", "output_ns", "outputs", "rows", "run_ns")

    def __init__(self, rows: int, run_ns: int, input_ns: int, infer_ns: int, output_ns: int,
                 outputs: list[list[np.ndarray]]) -> None:
        self.rows = rows
        self.run_ns = run_ns
        self.input_ns = input_ns
        self.infer_ns = infer_ns
        self.output_ns = output_ns
        self.outputs = outputs


def check_batchable(model: str, onnx: OnnxModel) -> None:
    """Raise ``ModelLoadError`` unless every input's first dim is dynamic (the batch) and
    no output has a fixed first dim (outputs are split back along it)."""
    for spec in onnx.inputs.values():
        if not spec.shape or spec.shape[0] != -1:
            raise ModelLoadError(
                f"model '{model}' has dynamic_batching, but input '{spec.name}' has shape "
                f"{list(spec.shape)}: batching needs a dynamic first (batch) dimension on "
                "every input")
    for name, shape in onnx.output_shapes.items():
        if shape and shape[0] >= 0:
            raise ModelLoadError(
                f"model '{model}' has dynamic_batching, but output '{name}' has shape "
                f"{list(shape)}: batching needs a dynamic first (batch) dimension on every "
                "output")


class Batcher:
    """The dynamic batcher of one loaded version. Create and use it on the event loop.

    ``executor`` runs the batches (None: inline on the loop); ``slots`` is how many may run
    at once (the pool's threads). Raises ``ModelLoadError`` for a model that cannot batch.
    """

    def __init__(self, model: str, version: int, onnx: OnnxModel, settings: BatchingSettings,
                 stats: VersionStats, *, executor: Executor | None, slots: int = 1) -> None:
        check_batchable(model, onnx)
        self._model = model
        self._version = version
        self._onnx = onnx
        self._stats = stats
        self._executor = executor
        self._slots = max(1, slots) if executor is not None else 1
        self._max = settings.max_batch_size
        self._preferred = frozenset(settings.preferred_batch_sizes)
        self._max_preferred = max(settings.preferred_batch_sizes, default=self._max)
        self._delay_ns = settings.max_queue_delay_us * 1000
        self._max_queue = settings.max_queue_size
        # Load-time tables: input order for concatenation, output positions by name.
        self._inputs = tuple(onnx.inputs)
        self._outputs = list(onnx.output_names)
        self._all_picks = tuple(range(len(self._outputs)))
        self._index = {name: i for i, name in enumerate(self._outputs)}
        # Requests can share a batch only with equal non-batch dims; when every such dim
        # is fixed by the model they always do, and no per-request key is needed.
        self._keyed = any(d < 0 for s in onnx.inputs.values() for d in s.shape[1:])
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Member] = deque()
        self._busy = 0
        self._closing = False
        self._dispatching = False
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not yet running)."""
        return len(self._queue)

    def submit(self, feeds: dict[str, np.ndarray], names: list[str], request_id: str,
               deadline: float | None) -> asyncio.Future[BatchResult]:
        """Queue one validated request; the future gets its outputs (``names``, in order).

        Raises ``Overloaded`` beyond ``max_queue_size`` and ``InvalidInput`` when its
        inputs disagree on the batch dim. The future fails with ``InferenceFailed`` when
        its batch failed, ``DeadlineExceeded`` when the deadline passed while it queued.
        """
        inputs = self._inputs
        rows = feeds[inputs[0]].shape[0]
        if len(inputs) > 1:
            for name in inputs[1:]:
                if feeds[name].shape[0] != rows:
                    raise InvalidInput(
                        f"input '{name}': batch dimension {feeds[name].shape[0]} differs from "
                        f"input '{inputs[0]}' ({rows}); model '{self._model}' batches "
                        "requests along the first dimension of every input")
        key = (tuple(feeds[n].shape[1:] for n in inputs) if self._keyed else None)
        picks = (self._all_picks if names is self._onnx.output_names
                 else tuple(self._index[n] for n in names))
        passes = rows > self._max or rows == 0
        if not passes and self._max_queue and len(self._queue) >= self._max_queue:
            raise Overloaded(
                f"model '{self._model}' version {self._version} has {len(self._queue)} "
                "requests waiting for a batch, the limit (dynamic_batching.max_queue_size) "
                f"is {self._max_queue}")
        future: asyncio.Future[BatchResult] = self._loop.create_future()
        member = _Member(feeds, rows, key, picks, future, time.perf_counter_ns(), deadline,
                         request_id)
        if passes:
            self._start([member])  # alone, at once
            return future
        self._queue.append(member)
        if self._soon is None and self._busy < self._slots:
            # Coalesced: requests arriving in the same loop iteration share one look.
            self._soon = self._loop.call_soon(self._on_soon)
        return future

    def close(self) -> None:
        """Stop waiting: send what is queued now (a drain, an unload, a swap)."""
        self._closing = True
        self._dispatch()

    # -- forming batches (event loop) ---------------------------------------------------

    def _on_soon(self) -> None:
        self._soon = None
        self._dispatch()

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        if self._dispatching:
            return
        self._dispatching = True
        try:
            queue = self._queue
            while queue and self._busy < self._slots:
                count, wait_ns = self._plan(time.perf_counter_ns())
                if not count:
                    self._arm(wait_ns)
                    return
                self._start([queue.popleft() for _ in range(count)])
            if not queue and self._timer is not None:
                self._timer.cancel()
                self._timer = None
        finally:
            self._dispatching = False

    def _plan(self, now_ns: int) -> tuple[int, int]:
        """How many requests at the head leave now (0: none yet, wait ``wait_ns``)."""
        limit = self._max_preferred
        preferred = self._preferred
        first = self._queue[0]
        key = first.key
        total = count = best = 0
        blocked = False
        for member in self._queue:
            if count and (total + member.rows > limit or member.key != key):
                blocked = True
                break
            total += member.rows
            count += 1
            if total in preferred:
                best = count
            if total >= limit:
                break
        waited = now_ns - first.enqueued_ns
        due = self._closing or waited + _SLACK_NS >= self._delay_ns
        if best and not due:
            return best, 0
        if blocked or total >= limit or due:
            return count, 0
        return 0, self._delay_ns - waited

    def _arm(self, wait_ns: int) -> None:
        due = time.perf_counter_ns() + wait_ns
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._loop.call_later(wait_ns / 1e9, self._on_timer)

    def _start(self, batch: list[_Member]) -> None:
        now = time.monotonic()
        live: list[_Member] = []
        for member in batch:
            if member.future.done():  # its caller went away (cancelled)
                continue
            if member.deadline is not None and now >= member.deadline:
                member.future.set_exception(DeadlineExceeded(
                    "the client's deadline expired before the model ran"))
                continue
            live.append(member)
        if not live:
            return
        self._busy += 1
        if self._executor is None:
            try:
                executed: _Executed | BaseException = self._execute(live)
            except Exception as exc:
                executed = exc
            self._finish(live, executed)
        else:
            running = self._loop.run_in_executor(self._executor, self._execute, live)
            running.add_done_callback(partial(self._finished, live))

    # -- running (worker thread, or inline) ---------------------------------------------

    def _execute(self, members: list[_Member]) -> _Executed:
        started = time.perf_counter_ns()
        if len(members) == 1:
            feeds = members[0].feeds
            rows = members[0].rows
        else:
            feeds = {name: np.concatenate([m.feeds[name] for m in members])
                     for name in self._inputs}
            rows = sum(m.rows for m in members)
        run = time.perf_counter_ns()
        arrays = self._onnx.run(feeds, self._outputs)
        ran = time.perf_counter_ns()
        for name, array in zip(self._outputs, arrays, strict=True):
            if array.ndim == 0 or array.shape[0] != rows:
                raise ValueError(f"output '{name}' has shape {list(array.shape)}, expected "
                                 f"{rows} rows (the batch) first")
        if len(members) == 1:
            outputs = [[arrays[i] for i in members[0].picks]]
        else:
            outputs = []
            start = 0
            for member in members:
                end = start + member.rows
                outputs.append([arrays[i][start:end] for i in member.picks])
                start = end
        return _Executed(rows, run, run - started, ran - run, time.perf_counter_ns() - ran,
                         outputs)

    # -- results (event loop) -----------------------------------------------------------

    def _finished(self, members: list[_Member], running: asyncio.Future[_Executed]) -> None:
        if running.cancelled():
            result: _Executed | BaseException = InferenceFailed("the batch was cancelled")
        else:
            exc = running.exception()
            result = exc if exc is not None else running.result()
        self._finish(members, result)
        self._dispatch()

    def _finish(self, members: list[_Member], result: _Executed | BaseException) -> None:
        self._busy -= 1
        if isinstance(result, BaseException):
            log.error("batch run failed", extra={
                "event": "run_failed", "model": self._model, "version": self._version,
                "batch_requests": len(members),
                "request_ids": [m.request_id for m in members],
                "reason": f"{type(result).__name__}: {result}"})
            for member in members:
                if not member.future.done():
                    failure = InferenceFailed("the model failed to run on this request's batch")
                    failure.__cause__ = result
                    member.future.set_exception(failure)
            return
        self._stats.record_batch(result.rows, input_ns=result.input_ns,
                                 infer_ns=result.infer_ns, output_ns=result.output_ns)
        run_ns = result.run_ns
        for member, outputs in zip(members, result.outputs, strict=True):
            if not member.future.done():
                member.future.set_result((run_ns, outputs))
