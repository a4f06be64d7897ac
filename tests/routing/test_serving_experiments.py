"""Online experiments driven by live traffic and feedback on a real in-process gateway: a
canary of a worse (or failing) version aborts by itself, a good one promotes itself, and a
bandit converges to the better arm through the request log's rewards."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.pb import admin_pb2 as apb
from gateway.pb import grpc_service_pb2 as ipb
from tests import onnx_models
from tests.routing.serving_support import (
    FAIL_VALUE,
    Clients,
    features,
    gather_model,
    infer_request,
    predicted,
    start_gateway,
)
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

MODELS = ("worse", "failing", "good", "bandit")
EXTRA = """
[request_log]
flush_interval_ms = 20
[traffic]
canary_tick_s = 0.1
bandit_update_s = 0.2
policy_sync_s = 0.5
"""
# Loose latency guards: these tests are about quality and errors, not a noisy p99.
GUARDS = apb.CanaryGuards(max_error_rate_delta=0.02, max_p99_ratio=100, p99_slack_ms=1000,
                          max_quality_drop=0.02, min_labels=15)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    root = tmp_path_factory.mktemp("experiments")
    server = start_gateway(root, dict.fromkeys(MODELS, model_files["logreg"]), EXTRA)
    yield server
    server.stop()


@pytest.fixture
def clients(gateway: InProcessGateway) -> Iterator[Clients]:
    c = Clients(gateway.grpc_address, gateway.admin_address)
    yield c
    c.close()


Truth = Callable[[ipb.ModelInferResponse], int]


def serve_and_label(clients: Clients, model: str, start: int, n: int, truth: Truth,
                    *, first: float | None = None) -> list[ipb.ModelInferResponse | None]:
    """``n`` keyed requests (ids ``model-i``), then a label for each answered one."""
    futures = [clients.inference.ModelInfer.future(
        infer_request(model, f"{model}-{i}", features(i, first=first), key=f"user-{i}"),
        timeout=30) for i in range(start, start + n)]
    answers: list[ipb.ModelInferResponse | None] = []
    for future in futures:
        answers.append(None if future.exception() is not None else future.result())
    labels = {a.id: truth(a) for a in answers if a is not None}
    if labels:
        clients.labels(model, labels)
    return answers


FINAL = ("aborted", "promoted", "ended")


def finished(status: apb.TrafficPolicyStatus) -> bool:
    """The ramp reached a final state and serving follows it (the controller stores the
    outcome first and the serving table follows right after its tick)."""
    return status.canary.status in FINAL and not status.HasField("policy")


def start_canary(clients: Clients, model: str, version: int, **fields: object
                 ) -> apb.TrafficPolicyStatus:
    return clients.admin.call("StartCanary", apb.StartCanaryRequest(
        model=model, version=version, guards=GUARDS, **fields))


def drive_until(clients: Clients, model: str, truth: Truth, done: Callable[
        [apb.TrafficPolicyStatus], bool], *, timeout: float, first: float | None = None
                ) -> apb.TrafficPolicyStatus:
    sent = 0

    def probe() -> apb.TrafficPolicyStatus | None:
        nonlocal sent
        status = clients.traffic(model)
        if done(status):
            return status
        serve_and_label(clients, model, sent, 40, truth, first=first)
        sent += 40
        return None

    return wait_until(probe, timeout=timeout, what=f"the canary of {model} to finish",
                    interval=0.0)


def test_a_canary_of_a_worse_version_aborts_by_itself(clients: Clients) -> None:
    model = "worse"
    candidate = clients.register(model, onnx_models.logreg_like_model(seed=7))
    status = start_canary(clients, model, candidate, steps=[50, 100], min_requests=40,
                          min_seconds=3)
    assert status.canary.status == "running" and status.policy.kind == "canary"

    def truth(answer: ipb.ModelInferResponse) -> int:
        # The outcome proves the champion right and the candidate wrong.
        guess = predicted(answer)
        return guess if answer.model_version == "1" else 1 - guess

    final = drive_until(clients, model, truth, finished, timeout=40)
    assert final.canary.status == "aborted", final.canary
    assert "live quality" in final.canary.reason
    assert not final.HasField("policy") and list(final.serving_set) == [1]
    state = clients.model(model)
    assert state.aliases["production"] == 1 and state.served_version == 1
    version = clients.admin.call("GetVersion", apb.GetVersionRequest(model=model,
                                                                     version=candidate))
    assert version.status == "rejected"
    assert any("canary aborted" in str(e.detail) for e in clients.admin.events(model)
               if e.version == candidate)
    after = Counter(a.model_version for a in serve_and_label(
        clients, model, 10_000, 60, lambda a: 0) if a is not None)
    assert after == Counter({"1": 60})


def test_a_canary_of_a_failing_version_aborts_on_its_error_rate(clients: Clients) -> None:
    model = "failing"
    candidate = clients.register(model, gather_model())
    start_canary(clients, model, candidate, steps=[30, 100], min_requests=20, min_seconds=3)
    final = drive_until(clients, model, lambda a: 0, finished, timeout=40,
                        first=FAIL_VALUE)
    assert final.canary.status == "aborted" and "error rate" in final.canary.reason
    assert not final.HasField("policy")
    assert clients.model(model).aliases["production"] == 1
    assert clients.admin.call("GetVersion", apb.GetVersionRequest(
        model=model, version=candidate)).status == "rejected"


def test_a_canary_of_a_good_version_promotes_it(clients: Clients) -> None:
    model = "good"
    candidate = clients.register(model, onnx_models.logreg_like_model(seed=3))
    start_canary(clients, model, candidate, steps=[40, 100], min_requests=30, min_seconds=0.5)
    final = drive_until(clients, model, predicted, finished, timeout=40)
    assert final.canary.status == "promoted", final.canary
    assert not final.HasField("policy") and final.production == candidate
    state = clients.model(model)
    assert state.aliases["production"] == candidate and state.served_version == candidate
    answers = serve_and_label(clients, model, 20_000, 40, predicted)
    assert {a.model_version for a in answers if a is not None} == {str(candidate)}


def test_a_bandit_converges_to_the_better_arm_through_feedback(clients: Clients) -> None:
    model = "bandit"
    better = clients.register(model, onnx_models.logreg_like_model(seed=7))
    worse = clients.register(model, onnx_models.logreg_like_model(seed=11))
    status = clients.admin.call("StartBandit", apb.StartBanditRequest(
        model=model, versions=[better, worse], floor=0.1))
    assert status.policy.kind == "bandit"

    def truth(answer: ipb.ModelInferResponse) -> int:
        guess = predicted(answer)
        return guess if answer.model_version == str(better) else 1 - guess

    sent = 0

    def converged() -> float | None:
        nonlocal sent
        answers = serve_and_label(clients, model, sent, 100, truth)
        sent += 100
        share = Counter(a.model_version for a in answers if a is not None)[str(better)] / 100
        return share if share >= 0.85 else None

    wait_until(converged, timeout=45, what="the bandit to favour the better arm", interval=0.2)
    last = serve_and_label(clients, model, sent, 300, truth)
    picks = Counter(a.model_version for a in last if a is not None)
    assert sum(picks.values()) == 300
    assert picks[str(better)] / 300 >= 0.8, picks
    # The exploration floor still sends the worse arm a little.
    assert set(picks) <= {str(better), str(worse)}
