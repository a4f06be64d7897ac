"""``python -m loadtests swap`` against a subprocess gateway: a promotion and a rollback
through the ``gateway`` CLI during load fail no request, are marked on the timeline, and
the swap windows' p99 is reported against the steady windows'."""

from __future__ import annotations

from pathlib import Path

from tests.loadtests.routing_gateway import TOKEN, RoutingGateway, routing_gateway

__all__ = ["routing_gateway"]


def test_swap_promotes_and_rolls_back_under_load_without_failures(
        routing_gateway: RoutingGateway, tmp_path: Path) -> None:
    gw = routing_gateway
    plot = tmp_path / "swap.png"
    doc = gw.loadtest("swap", "--target", gw.grpc, "--admin-target", gw.admin,
                      "--token", TOKEN, "--model", "fraud", "--concurrency", "4",
                      "--duration", "6", "--warmup", "0.3", "--promote", "1:2", "--settle", "0.2",
                      "--rollback", "2.6", "--plot", str(plot))
    summary = doc["summary"]
    assert summary["failed_requests"] == 0, summary["errors_by_code"]
    assert [(c["label"], c["returncode"]) for c in summary["commands"]] == [
        ("promote fraud 2", 0), ("rollback fraud", 0)]
    labels = [e["label"] for e in doc["events"]]
    assert "promote fraud 2" in labels and "rollback fraud" in labels
    assert any(label.startswith("promote fraud 2: done") for label in labels)
    # Version 1, then 2 after the promotion, then 1 again after the rollback.
    assert set(summary["versions"]) == {"1", "2"}
    versions = [w["versions"] for w in doc["runs"][0]["windows"]]
    assert versions[0] == {"1": versions[0]["1"]} and set(versions[-1]) == {"1"}
    windows = summary["windows"]
    assert summary["swap_windows"] and windows["swap"]["ok"] > 0 and windows["steady"]["ok"] > 0
    assert windows["swap"]["p99_us"] > 0 and windows["p99_ratio"] is not None
    assert plot.is_file() and plot.stat().st_size > 0
