"""Whole runs over real gRPC against the in-process V2 double: bounds, tallies, processes."""

from __future__ import annotations

import time

from loadtests.drivers import Bounds, ClosedLoop, OpenLoop
from loadtests.report import run_report
from loadtests.runner import RunConfig, run_load
from loadtests.workload import RandomPayload, TensorSpec, build_pool
from tests.loadtests.v2double import Behaviour

POOL = build_pool("m", "", [TensorSpec("x", "FP32", (1, 4))], RandomPayload(), 16)


def _config(server, plan, bounds, **kw) -> RunConfig:
    return RunConfig(target=server.address, plan=plan, bounds=bounds, **kw)


def test_run_stops_at_the_request_count(v2_server) -> None:
    server = v2_server()
    result = run_load(
        _config(server, ClosedLoop(4), Bounds(max_requests=300, duration_s=30.0)), POOL
    )
    report = run_report(result)
    assert report["stopped_by"] == "count"
    assert report["requests"]["sent"] == 300
    assert report["requests"]["ok"] == 300
    assert server.received.count == 300  # no warm-up configured: nothing else was sent
    assert result.wall_s < 10


def test_run_stops_at_the_time_given(v2_server) -> None:
    server = v2_server(Behaviour(delay_s=0.005))
    t0 = time.monotonic()
    result = run_load(
        _config(server, ClosedLoop(2), Bounds(max_requests=1_000_000, duration_s=0.5)), POOL
    )
    took = time.monotonic() - t0
    report = run_report(result)
    assert report["stopped_by"] == "time"
    assert 0.5 <= took < 3.0
    assert 0 < report["requests"]["ok"] < 1_000_000
    assert report["elapsed_s"] < 0.7


def test_a_stalled_server_is_cut_off_at_the_hard_stop(v2_server) -> None:
    server = v2_server(Behaviour(delay_s=30.0))
    t0 = time.monotonic()
    result = run_load(
        _config(
            server,
            ClosedLoop(3),
            Bounds(max_requests=100, duration_s=0.2, grace_s=0.2),
            timeout_s=60.0,
        ),
        POOL,
    )
    assert time.monotonic() - t0 < 3.0
    report = run_report(result)
    assert report["requests"]["incomplete"] == 3
    assert report["requests"]["ok"] == 0


def test_served_versions_are_tallied(v2_server) -> None:
    server = v2_server(Behaviour(version=lambda n: "2" if n % 4 == 0 else "1"))
    report = run_report(
        run_load(_config(server, ClosedLoop(1), Bounds(max_requests=400, duration_s=30.0)), POOL)
    )
    assert {v: row["count"] for v, row in report["versions"].items()} == {"1": 300, "2": 100}
    assert report["versions"]["2"]["share"] == 0.25


def test_shed_requests_and_deadlines_are_counted_by_status(v2_server) -> None:
    server = v2_server(Behaviour(delay_s=0.02, shed_above=2))
    report = run_report(
        run_load(_config(server, ClosedLoop(6), Bounds(max_requests=120, duration_s=30.0)), POOL)
    )
    codes = report["errors_by_code"]
    assert codes["RESOURCE_EXHAUSTED"] > 0
    assert report["requests"]["ok"] + codes["RESOURCE_EXHAUSTED"] == 120
    # Shedding is fast, admitted requests take the 20 ms delay.
    shed = report["error_latency_by_code_us"]["RESOURCE_EXHAUSTED"]
    assert shed["p50"] < report["latency_us"]["p50"]

    slow = v2_server(Behaviour(delay_s=0.5))
    report = run_report(
        run_load(
            _config(slow, ClosedLoop(2), Bounds(max_requests=4, duration_s=5.0), timeout_s=0.05),
            POOL,
        )
    )
    assert report["errors_by_code"] == {"DEADLINE_EXCEEDED": 4}


def test_open_loop_over_grpc_reports_offered_and_achieved_rates(v2_server) -> None:
    server = v2_server()
    report = run_report(
        run_load(
            _config(server, OpenLoop(rate=400), Bounds(max_requests=100_000, duration_s=0.5)), POOL
        )
    )
    assert report["offered_rps"] == 400
    assert report["requests"]["sent"] == 200
    assert report["achieved_rps"] == report["throughput_rps"]
    assert 340 < report["achieved_rps"] <= 401


def test_a_stall_in_an_open_loop_run_shows_in_the_latencies(v2_server) -> None:
    # Request #60 (t≈0.3 s at 200/s) stalls the server for 300 ms.
    server = v2_server(Behaviour(stall_at=60, stall_s=0.3))
    bounds = Bounds(max_requests=100_000, duration_s=0.9)
    report = run_report(run_load(_config(server, OpenLoop(rate=200), bounds, window_s=0.25), POOL))
    lat = report["latency_us"]
    assert report["requests"]["ok"] == 180
    assert 250_000 <= lat["max"] <= 450_000
    assert lat["p90"] >= 80_000  # ~60 requests were scheduled inside the stall
    p99 = {w["t_s"]: w["p99_us"] for w in report["windows"]}
    assert p99[0.0] < 50_000  # before the stall
    assert max(p99[0.25], p99[0.5]) > 200_000  # requests completing when the stall ends
    assert p99[0.75] < 50_000  # after it


def test_several_processes_share_the_count_and_merge(v2_server) -> None:
    server = v2_server(Behaviour(version=lambda n: str(n % 2 + 1)))
    result = run_load(
        _config(server, ClosedLoop(4), Bounds(max_requests=301, duration_s=30.0), processes=2),
        POOL,
    )
    report = run_report(result)
    assert report["requests"]["ok"] == 301
    assert server.received.count == 301
    assert sum(v["count"] for v in report["versions"].values()) == 301
    assert set(report["versions"]) == {"1", "2"}
    assert len(report["client"]["cpu_cores_per_process"]) == 2
    assert sum(w["ok"] for w in report["windows"]) == 301
