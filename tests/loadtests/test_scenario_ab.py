"""``python -m loadtests ab`` against a subprocess gateway running a sticky A/B test set
with ``gateway traffic set``: the observed split and key stickiness pass, and a wrong
expectation is reported as failed."""

from __future__ import annotations

from tests.loadtests.routing_gateway import RoutingGateway, routing_gateway

__all__ = ["routing_gateway"]

LOAD = ("--model", "fraud", "--concurrency", "8", "--duration", "1.5", "--warmup", "0.3")


def test_ab_checks_the_split_and_stickiness_of_a_sticky_policy(
        routing_gateway: RoutingGateway) -> None:
    gw = routing_gateway
    gw.cli("traffic", "set", "fraud", "1=70", "2=30", "--sticky")
    doc = gw.loadtest("ab", "--target", gw.grpc, *LOAD, "--expect", "1=70", "--expect", "2=30",
                      "--tolerance", "8", "--keys", "400", "--probe-repeats", "2")
    summary = doc["summary"]
    assert summary["passed"], summary
    assert summary["errors"] == 0
    shares = {r["version"]: r["observed_pct"] for r in summary["split"]["versions"]}
    assert set(shares) == {"1", "2"} and abs(shares["2"] - 30) <= 8
    sticky = summary["sticky"]
    assert sticky["keys"] == 400 and sticky["inconsistent"] == {} and sticky["errors"] == 0
    assert set(sticky["assignment"].values()) == {"1", "2"}
    assert doc["workload"]["routing_keys"] == 400

    # The same traffic, checked against the wrong weights (keys by header this time).
    doc = gw.loadtest("ab", "--target", gw.grpc, *LOAD, "--expect", "1=50", "--expect", "2=50",
                      "--tolerance", "2", "--keys", "400", "--key-via", "header",
                      "--probe-repeats", "1")
    assert not doc["summary"]["passed"]
    assert doc["summary"]["sticky"]["ok"]
    assert any("observed split is off" in w for w in doc["warnings"])
