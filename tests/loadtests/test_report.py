"""The RUN report: rates, client saturation and the warnings a user sees."""

from __future__ import annotations

from loadtests.drivers import Bounds, ClosedLoop, OpenLoop
from loadtests.report import SATURATION_CORES, run_report, run_warnings, table
from loadtests.runner import RunConfig, RunResult
from loadtests.stats import Recorder


def _result(
    plan, cpu: list[tuple[float, float]], *, ok: int = 100, elapsed: float = 1.0, not_sent: int = 0
) -> RunResult:
    rec = Recorder()
    for _ in range(ok):
        rec.record_sent()
        rec.record_ok(0.5, 1000, "1")
    snap = rec.snapshot(elapsed_s=elapsed, stopped_by="time", not_sent=not_sent)
    snap.cpu = cpu
    config = RunConfig("127.0.0.1:1", plan, Bounds(10_000, elapsed), processes=len(cpu))
    return RunResult(config, snap)


def test_a_busy_client_process_is_flagged_with_advice() -> None:
    run = run_report(_result(ClosedLoop(8), [(0.95, 1.0), (0.30, 1.0)]))
    assert run["client"]["saturated"] is True
    assert run["client"]["cpu_cores_per_process"] == [0.95, 0.3]
    assert run["client"]["cpu_cores"] == 1.25
    (warning,) = run_warnings(run)
    assert "saturated" in warning and "--processes" in warning


def test_a_client_below_the_limit_is_not_flagged() -> None:
    run = run_report(_result(ClosedLoop(8), [(SATURATION_CORES - 0.05, 1.0)]))
    assert run["client"]["saturated"] is False
    assert run_warnings(run) == []


def test_open_loop_shortfall_and_unsent_requests_are_reported() -> None:
    run = run_report(_result(OpenLoop(rate=200), [(0.1, 1.0)], ok=100, not_sent=20))
    assert run["offered_rps"] == 200 and run["achieved_rps"] == 100
    warnings = " ".join(run_warnings(run))
    assert "never sent" in warnings and "achieved 100/s of 200/s" in warnings


def test_table_aligns_numbers_right() -> None:
    text = table(["name", "n"], [["a", 5], ["bb", 1234]])
    assert text.splitlines() == ["name      n", "----  -----", "a         5", "bb    1,234"]


def test_a_client_behind_its_open_loop_schedule_is_reported() -> None:
    result = _result(OpenLoop(rate=100), [(0.1, 1.0)])
    for _ in range(100):
        result.snapshot.send_lag.record_value(20_000)
    warnings = " ".join(run_warnings(run_report(result)))
    assert "sent requests late" in warnings
