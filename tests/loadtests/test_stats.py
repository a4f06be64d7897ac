"""Statistics on synthetic latencies: percentiles, merging, versions, windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loadtests.stats import (
    HIGHEST_US,
    Recorder,
    Snapshot,
    latency_summary,
    merge,
    version_rows,
    window_rows,
)


def _within_hdr(measured: float, exact: float, sig_figs: int = 3) -> bool:
    # HDR with 3 significant figures: values are exact to 1 part in 10^3 (plus rounding of 1 µs).
    return abs(measured - exact) <= exact * 10 ** (-sig_figs) * 2 + 1


def _snapshot(rec: Recorder, elapsed: float, stopped_by: str = "time") -> Snapshot:
    return rec.snapshot(elapsed_s=elapsed, stopped_by=stopped_by, cpu_s=0.5, wall_s=1.0)


def test_percentiles_of_a_known_distribution_are_exact_to_hdr_precision() -> None:
    rng = np.random.default_rng(7)
    # Log-normal latencies around 1 ms with a long tail, like a real server.
    samples = np.maximum(1, rng.lognormal(mean=np.log(1000), sigma=0.6, size=200_000)).astype(int)
    rec = Recorder()
    for i, value in enumerate(samples):
        rec.record_ok(i / 200_000, int(value), "1")
    summary = latency_summary(rec.ok)
    assert summary["count"] == len(samples)
    for key, pct in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        exact = np.percentile(samples, pct, method="inverted_cdf")
        assert _within_hdr(summary[key], exact), (key, summary[key], exact)
    assert _within_hdr(summary["max"], samples.max())
    assert summary["min"] == samples.min()
    assert summary["mean"] == pytest.approx(samples.mean(), rel=1e-3)


def test_uniform_latencies_give_linear_percentiles() -> None:
    rec = Recorder()
    for value in range(1, 10_001):  # 1..10000 µs, once each
        rec.record_ok(0.0, value, "1")
    summary = latency_summary(rec.ok)
    assert _within_hdr(summary["p50"], 5000)
    assert _within_hdr(summary["p90"], 9000)
    assert _within_hdr(summary["p99"], 9900)


def test_empty_histogram_summarises_to_none() -> None:
    summary = latency_summary(Recorder().ok)
    assert summary["count"] == 0
    assert summary["p99"] is None and summary["max"] is None


def test_latency_beyond_the_range_is_clamped_not_lost() -> None:
    rec = Recorder()
    rec.record_ok(0.0, HIGHEST_US * 10, "1")
    rec.record_ok(0.0, 0, "1")
    assert rec.ok.get_total_count() == 2
    assert rec.ok.get_min_value() >= 1


def test_merging_encoded_per_process_snapshots_equals_one_recorder() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(100, 50_000, size=30_000)
    times = np.sort(rng.random(size=30_000) * 5.0)
    codes = ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
    whole = Recorder()
    parts = [Recorder() for _ in range(3)]
    for i, (v, t) in enumerate(zip(values, times, strict=True)):
        part = parts[i % 3]
        for rec in (whole, part):
            if i % 10 == 0:
                rec.record_error(float(t), int(v), codes[i % 20 == 0])
            else:
                rec.record_ok(float(t), int(v), str(i % 2 + 1))
            rec.record_sent()
    # Through the process boundary: JSON text, histograms HDR-encoded.
    wired = [Snapshot.from_wire(json.loads(json.dumps(_snapshot(p, 5.0).to_wire()))) for p in parts]
    merged = merge(wired)
    single = _snapshot(whole, 5.0)
    assert merged.ok_count == single.ok_count == 27_000
    assert merged.sent == 30_000
    assert merged.error_counts() == single.error_counts()
    assert latency_summary(merged.ok) == latency_summary(single.ok)
    assert latency_summary(merged.error_latency()) == latency_summary(single.error_latency())
    assert version_rows(merged) == version_rows(single)
    assert window_rows(merged, 1.0) == window_rows(single, 1.0)
    assert len(merged.cpu) == 3


def test_merge_keeps_the_longest_elapsed_and_both_stop_reasons() -> None:
    a, b = Recorder(), Recorder()
    a.record_ok(0.1, 100, "1")
    b.record_ok(0.2, 200, "1")
    merged = merge([_snapshot(a, 1.5, "count"), _snapshot(b, 2.0, "time")])
    assert merged.elapsed_s == 2.0
    assert merged.stopped_by == "count+time"


def test_per_version_tally_counts_shares_and_latency() -> None:
    rec = Recorder()
    for i in range(300):
        rec.record_ok(0.0, 1000, "1")
        if i < 100:
            rec.record_ok(0.0, 5000, "2")
    rows = version_rows(_snapshot(rec, 1.0))
    assert window_rows(_snapshot(rec, 1.0), 1.0)[0]["versions"] == {"1": 300, "2": 100}
    assert set(rows) == {"1", "2"}
    assert rows["1"]["count"] == 300 and rows["2"]["count"] == 100
    assert rows["1"]["share"] == pytest.approx(0.75)
    assert rows["2"]["share"] == pytest.approx(0.25)
    assert _within_hdr(rows["1"]["latency_us"]["p50"], 1000)
    assert _within_hdr(rows["2"]["latency_us"]["p99"], 5000)


def test_per_window_throughput_and_percentiles() -> None:
    rec = Recorder(window_s=1.0)
    # Window 0: 100 fast requests; window 1: nothing; window 2: 50 slow, 5 errors;
    # window 3 is partial (elapsed 3.5 s): 20 requests.
    for i in range(100):
        rec.record_ok(0.5 + i / 1000, 1000 + i, "1")
    for i in range(50):
        rec.record_ok(2.1 + i / 1000, 20_000, "1")
    for _ in range(5):
        rec.record_error(2.5, 300, "RESOURCE_EXHAUSTED")
    for _ in range(20):
        rec.record_ok(3.2, 2000, "1")
    rows = window_rows(_snapshot(rec, 3.5), 1.0)
    assert [r["t_s"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert [r["ok"] for r in rows] == [100, 0, 50, 20]
    assert [r["errors"] for r in rows] == [0, 0, 5, 0]
    assert rows[0]["throughput_rps"] == 100
    assert rows[1]["throughput_rps"] == 0 and rows[1]["p50_us"] is None
    # 2 significant figures per window.
    assert rows[0]["p50_us"] == pytest.approx(1050, rel=0.02)
    assert rows[2]["p99_us"] == pytest.approx(20_000, rel=0.02)
    assert rows[2]["error_rps"] == 5
    assert rows[2]["versions"] == {"1": 50} and rows[1]["versions"] == {}
    assert rows[3]["length_s"] == pytest.approx(0.5)
    assert rows[3]["throughput_rps"] == pytest.approx(40)


def test_progress_counters_follow_outcomes() -> None:
    progress = [0] * 6
    rec = Recorder(progress=progress, progress_base=3)
    rec.record_sent()
    rec.record_sent()
    rec.record_ok(0.0, 10, "1")
    rec.record_error(0.0, 10, "INTERNAL")
    assert progress == [0, 0, 0, 1, 1, 2]
