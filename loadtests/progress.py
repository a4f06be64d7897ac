"""A live, throttled progress line on stderr while a run goes on."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from loadtests.runner import ProgressSink, RunConfig
from loadtests.stats import PROGRESS_SLOTS


class ProgressLine(ProgressSink):
    """Prints ``[label] t=…s ok=… err=… rps=…`` every ``interval_s``.

    On a terminal the line is rewritten in place; otherwise (logs, CI) one line is
    written per interval. Reads the shared counters without locking: the numbers are
    for humans and may be a request or two stale.
    """

    def __init__(self, stream: TextIO | None = None, interval_s: float = 1.0) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())

    def begin(
        self, counters: Sequence[int], processes: int, measure_start: float, config: RunConfig
    ) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop,
            args=(counters, processes, measure_start, config),
            name="progress",
            daemon=True,
        )
        self._thread.start()

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _totals(self, counters: Sequence[int], processes: int) -> tuple[int, int, int]:
        ok = sum(counters[i * PROGRESS_SLOTS] for i in range(processes))
        err = sum(counters[i * PROGRESS_SLOTS + 1] for i in range(processes))
        sent = sum(counters[i * PROGRESS_SLOTS + 2] for i in range(processes))
        return ok, err, sent

    def _loop(
        self, counters: Sequence[int], processes: int, measure_start: float, config: RunConfig
    ) -> None:
        last_t, last_done = time.monotonic(), 0
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            ok, err, sent = self._totals(counters, processes)
            rate = (ok + err - last_done) / max(now - last_t, 1e-9)
            last_t, last_done = now, ok + err
            t = now - measure_start
            phase = "warmup" if t < 0 else f"t={t:5.1f}s/{config.bounds.duration_s:g}s"
            line = (
                f"[{config.label}] {phase} sent={sent} ok={ok} err={err} "
                f"rate={rate:,.0f}/s (max {config.bounds.max_requests})"
            )
            if self._tty:
                self._stream.write("\r" + line.ljust(100))
            else:
                self._stream.write(line + "\n")
            self._stream.flush()


class Silent(ProgressSink):
    """No progress output."""
