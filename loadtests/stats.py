"""Latency and outcome statistics on HDR histograms.

Latencies are integers in microseconds. A ``Recorder`` accumulates one process's
measured requests; its ``Snapshot`` travels between processes as JSON-able data
(histograms HDR-encoded) and snapshots merge by adding histograms and counters, so
percentiles of a multi-process run are exact to HDR precision, not averages of
per-process percentiles.

Times given to the recorder are seconds since the start of measurement (t=0); the
window of a request is the window in which it completed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour; larger values are clamped
SIG_FIGS = 3  # ±0.1 % for whole-run and per-version latencies
WINDOW_SIG_FIGS = 2  # ±1 % per window keeps hundreds of windows cheap
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))

# Slots per process in the shared progress array: ok, errors, sent.
PROGRESS_SLOTS = 3


def new_histogram(significant_figures: int = SIG_FIGS) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, significant_figures)


def _clamp(latency_us: int) -> int:
    return min(max(latency_us, LOWEST_US), HIGHEST_US)


def encode_histogram(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


def decode_histogram(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


@dataclass
class WindowTally:
    """Outcomes completed within one time window; ``latency`` and ``versions`` (count per
    served version) cover the successful ones."""

    ok: int = 0
    errors: int = 0
    latency: HdrHistogram = field(default_factory=lambda: new_histogram(WINDOW_SIG_FIGS))
    versions: dict[str, int] = field(default_factory=dict)


class Recorder:
    """Accumulates outcomes of measured requests in one process (one event loop; not thread-safe).

    ``progress``, when given, is a shared integer array updated on every outcome at
    ``progress_base + (0: ok, 1: errors, 2: sent)`` so a parent can print live counts.
    """

    def __init__(
        self,
        window_s: float = 1.0,
        progress: MutableSequence[int] | None = None,
        progress_base: int = 0,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = window_s
        self.ok = new_histogram()
        self.send_lag = new_histogram()
        self.errors: dict[str, HdrHistogram] = {}
        self.versions: dict[str, HdrHistogram] = {}
        self.windows: dict[int, WindowTally] = {}
        self.sent = 0
        self.warmup = 0
        self._progress = progress
        self._base = progress_base

    def _window(self, t_s: float) -> WindowTally:
        index = max(0, int(t_s // self.window_s))
        tally = self.windows.get(index)
        if tally is None:
            tally = self.windows[index] = WindowTally()
        return tally

    def record_sent(self) -> None:
        self.sent += 1
        if self._progress is not None:
            self._progress[self._base + 2] += 1

    def record_ok(self, t_s: float, latency_us: int, version: str) -> None:
        value = _clamp(latency_us)
        self.ok.record_value(value)
        hist = self.versions.get(version)
        if hist is None:
            hist = self.versions[version] = new_histogram()
        hist.record_value(value)
        tally = self._window(t_s)
        tally.ok += 1
        tally.latency.record_value(value)
        tally.versions[version] = tally.versions.get(version, 0) + 1
        if self._progress is not None:
            self._progress[self._base] += 1

    def record_error(self, t_s: float, latency_us: int, code: str) -> None:
        hist = self.errors.get(code)
        if hist is None:
            hist = self.errors[code] = new_histogram()
        hist.record_value(_clamp(latency_us))
        self._window(t_s).errors += 1
        if self._progress is not None:
            self._progress[self._base + 1] += 1

    def record_send_lag(self, lag_us: int) -> None:
        """How late the client sent a request relative to its schedule (open loop)."""
        self.send_lag.record_value(_clamp(lag_us))

    def snapshot(
        self,
        *,
        elapsed_s: float,
        stopped_by: str,
        incomplete: int = 0,
        not_sent: int = 0,
        cpu_s: float = 0.0,
        wall_s: float = 0.0,
    ) -> Snapshot:
        return Snapshot(
            ok=self.ok,
            send_lag=self.send_lag,
            errors=dict(self.errors),
            versions=dict(self.versions),
            windows=dict(self.windows),
            sent=self.sent,
            warmup=self.warmup,
            incomplete=incomplete,
            not_sent=not_sent,
            elapsed_s=elapsed_s,
            stopped_by=stopped_by,
            cpu=[(cpu_s, wall_s)],
        )


@dataclass
class Snapshot:
    """Results of one or more processes' measured requests.

    ``errors`` maps a gRPC status name to the latencies of requests that ended with it;
    ``cpu`` lists (cpu seconds, wall seconds) per process; ``stopped_by`` is "count",
    "time" or, after merging processes that disagree, "count+time".
    """

    ok: HdrHistogram
    send_lag: HdrHistogram
    errors: dict[str, HdrHistogram]
    versions: dict[str, HdrHistogram]
    windows: dict[int, WindowTally]
    sent: int
    warmup: int
    incomplete: int
    not_sent: int
    elapsed_s: float
    stopped_by: str
    cpu: list[tuple[float, float]]

    @property
    def ok_count(self) -> int:
        return int(self.ok.get_total_count())

    @property
    def error_count(self) -> int:
        return sum(int(h.get_total_count()) for h in self.errors.values())

    def error_counts(self) -> dict[str, int]:
        return {code: int(h.get_total_count()) for code, h in sorted(self.errors.items())}

    def error_latency(self) -> HdrHistogram:
        """Latencies of all failed requests, whatever their status."""
        return _added(self.errors.values())

    @property
    def completed(self) -> int:
        return self.ok_count + self.error_count

    def to_wire(self) -> dict[str, Any]:
        """JSON-able form (histograms HDR-encoded); inverse of ``from_wire``."""
        return {
            "ok": encode_histogram(self.ok),
            "send_lag": encode_histogram(self.send_lag),
            "errors": {c: encode_histogram(h) for c, h in self.errors.items()},
            "versions": {v: encode_histogram(h) for v, h in self.versions.items()},
            "windows": {
                str(i): [w.ok, w.errors, encode_histogram(w.latency), w.versions]
                for i, w in self.windows.items()
            },
            "sent": self.sent,
            "warmup": self.warmup,
            "incomplete": self.incomplete,
            "not_sent": self.not_sent,
            "elapsed_s": self.elapsed_s,
            "stopped_by": self.stopped_by,
            "cpu": [list(c) for c in self.cpu],
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            ok=decode_histogram(data["ok"]),
            send_lag=decode_histogram(data["send_lag"]),
            errors={c: decode_histogram(h) for c, h in data["errors"].items()},
            versions={v: decode_histogram(h) for v, h in data["versions"].items()},
            windows={
                int(i): WindowTally(
                    int(ok), int(err), decode_histogram(h), {v: int(n) for v, n in vers.items()}
                )
                for i, (ok, err, h, vers) in data["windows"].items()
            },
            sent=int(data["sent"]),
            warmup=int(data["warmup"]),
            incomplete=int(data["incomplete"]),
            not_sent=int(data["not_sent"]),
            elapsed_s=float(data["elapsed_s"]),
            stopped_by=str(data["stopped_by"]),
            cpu=[(float(c), float(w)) for c, w in data["cpu"]],
        )


def _added(hists: Iterable[HdrHistogram], significant_figures: int = SIG_FIGS) -> HdrHistogram:
    total = new_histogram(significant_figures)
    for hist in hists:
        if hist.get_total_count():
            total.add(hist)
    return total


def merge(snapshots: Sequence[Snapshot]) -> Snapshot:
    """Combine per-process snapshots that share one measurement clock (same t=0)."""
    if not snapshots:
        raise ValueError("nothing to merge")

    def combined(key: str) -> dict[str, HdrHistogram]:
        names = sorted({n for s in snapshots for n in getattr(s, key)})
        return {
            n: _added(getattr(s, key)[n] for s in snapshots if n in getattr(s, key)) for n in names
        }

    windows = {}
    for index in sorted({i for s in snapshots for i in s.windows}):
        parts = [s.windows[index] for s in snapshots if index in s.windows]
        windows[index] = WindowTally(
            ok=sum(p.ok for p in parts),
            errors=sum(p.errors for p in parts),
            latency=_added((p.latency for p in parts), WINDOW_SIG_FIGS),
            versions={
                v: sum(p.versions.get(v, 0) for p in parts)
                for v in sorted({v for p in parts for v in p.versions})
            },
        )
    reasons = sorted({s.stopped_by for s in snapshots})
    return Snapshot(
        ok=_added(s.ok for s in snapshots),
        send_lag=_added(s.send_lag for s in snapshots),
        errors=combined("errors"),
        versions=combined("versions"),
        windows=windows,
        sent=sum(s.sent for s in snapshots),
        warmup=sum(s.warmup for s in snapshots),
        incomplete=sum(s.incomplete for s in snapshots),
        not_sent=sum(s.not_sent for s in snapshots),
        elapsed_s=max(s.elapsed_s for s in snapshots),
        stopped_by="+".join(reasons),
        cpu=[c for s in snapshots for c in s.cpu],
    )


def latency_summary(hist: HdrHistogram) -> dict[str, float | int | None]:
    """count, min, mean, p50, p90, p99, p999, max of a latency histogram (µs; None if empty)."""
    count = int(hist.get_total_count())
    if count == 0:
        return {
            "count": 0,
            "min": None,
            "mean": None,
            **{k: None for k, _ in PERCENTILES},
            "max": None,
        }
    out: dict[str, float | int | None] = {
        "count": count,
        "min": int(hist.get_min_value()),
        "mean": round(float(hist.get_mean_value()), 1),
    }
    for key, pct in PERCENTILES:
        out[key] = int(hist.get_value_at_percentile(pct))
    out["max"] = int(hist.get_max_value())
    return out


def window_rows(snapshot: Snapshot, window_s: float) -> list[dict[str, Any]]:
    """Per-window throughput and latency, every window from t=0 to the end of measurement.

    The last window is usually partial; its rate is computed over its real length.
    """
    if snapshot.windows:
        last = max(max(snapshot.windows), math.ceil(snapshot.elapsed_s / window_s) - 1)
    else:
        last = math.ceil(snapshot.elapsed_s / window_s) - 1
    rows = []
    for index in range(last + 1):
        tally = snapshot.windows.get(index, WindowTally())
        start = index * window_s
        length = (
            min(window_s, snapshot.elapsed_s - start) if snapshot.elapsed_s > start else window_s
        )
        length = max(length, 1e-9)
        has = tally.ok > 0
        rows.append(
            {
                "t_s": round(start, 6),
                "length_s": round(length, 6),
                "ok": tally.ok,
                "errors": tally.errors,
                "throughput_rps": round(tally.ok / length, 3),
                "error_rps": round(tally.errors / length, 3),
                "p50_us": int(tally.latency.get_value_at_percentile(50)) if has else None,
                "p99_us": int(tally.latency.get_value_at_percentile(99)) if has else None,
                "max_us": int(tally.latency.get_max_value()) if has else None,
                "versions": dict(sorted(tally.versions.items())),
            }
        )
    return rows


def version_rows(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    """Count, share of successful responses and latency per served model version."""
    total = max(snapshot.ok_count, 1)
    return {
        version: {
            "count": int(hist.get_total_count()),
            "share": round(hist.get_total_count() / total, 6),
            "latency_us": latency_summary(hist),
        }
        for version, hist in snapshot.versions.items()
    }
