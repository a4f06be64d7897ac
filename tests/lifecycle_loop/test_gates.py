"""Gates: absolute thresholds, relative to the champion, latency and size budgets."""

from __future__ import annotations

from lifecycle.gates import GateConfig, GateReport, check_gates

CHAMPION = {"roc_auc": 0.90, "accuracy": 0.88, "log_loss": 0.30, "latency_p99_us": 50.0,
            "size_bytes": 1000.0}


def metrics(**changes: float) -> dict[str, float]:
    return {**CHAMPION, **changes}


def test_a_better_candidate_passes_every_check() -> None:
    config = GateConfig(min_auc=0.8, max_auc_drop=0.0, min_improvement=0.01,
                        max_latency_p99_us=100, max_size_bytes=2000,
                        maximums={"log_loss": 0.5})
    report = check_gates(config, "classification", metrics(roc_auc=0.93), CHAMPION,
                         champion_version=3)
    assert report.passed and report.summary() == "all gates passed"
    assert [c.name for c in report.checks] == [
        "min_roc_auc", "max_log_loss", "max_latency_p99_us", "max_size_bytes",
        "max_auc_drop", "min_improvement"]
    assert GateReport.from_json(report.to_json()) == report


def test_a_worse_candidate_fails_the_relative_gate() -> None:
    report = check_gates(GateConfig(), "classification", metrics(roc_auc=0.899), CHAMPION)
    assert not report.passed
    (failed,) = report.failures
    assert failed.name == "max_auc_drop" and round(failed.value or 0, 6) == -0.001
    # Within the allowed drop it passes; an improvement requirement can still fail it.
    assert check_gates(GateConfig(max_auc_drop=0.002), "classification",
                       metrics(roc_auc=0.899), CHAMPION).passed
    report = check_gates(GateConfig(min_improvement=0.02), "classification",
                         metrics(roc_auc=0.91), CHAMPION)
    assert [c.name for c in report.failures] == ["min_improvement"]
    assert "improvement 0.01 is below the required 0.02" in report.summary()


def test_budgets_and_absolute_thresholds() -> None:
    config = GateConfig(max_auc_drop=None, min_auc=0.95, max_latency_p99_us=40,
                        max_size_bytes=500, minimums={"accuracy": 0.9})
    report = check_gates(config, "classification", metrics(), None)
    assert sorted(c.name for c in report.failures) == [
        "max_latency_p99_us", "max_size_bytes", "min_accuracy", "min_roc_auc"]
    assert "size_bytes 1000 outside the bound (at most 500)" in report.summary()
    missing = check_gates(GateConfig(min_auc=0.5), "classification", {"accuracy": 1.0}, None)
    assert missing.failures[0].detail.startswith("roc_auc is unavailable")


def test_without_a_champion_relative_checks_pass_and_a_broken_one_fails_closed() -> None:
    alone = check_gates(GateConfig(min_improvement=0.1), "classification", metrics(), None)
    assert alone.passed
    assert {c.detail for c in alone.checks} == {"no champion roc_auc to compare with"}
    broken = check_gates(GateConfig(), "classification", metrics(), None,
                         champion_version=2, champion_error="artifact missing")
    assert [c.name for c in broken.failures] == ["champion_evaluation"]


def test_regression_compares_rmse_where_lower_is_better() -> None:
    champion = {"rmse": 1.0, "mae": 0.8, "r2": 0.5, "latency_p99_us": 5, "size_bytes": 10}
    better = check_gates(GateConfig(min_improvement=0.1), "regression",
                         {**champion, "rmse": 0.85}, champion)
    assert better.metric == "rmse" and better.passed
    worse = check_gates(GateConfig(), "regression", {**champion, "rmse": 1.05}, champion)
    assert [c.name for c in worse.failures] == ["max_auc_drop"]
