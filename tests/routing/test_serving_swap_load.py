"""Hot swap on a real in-process gateway: promotions, rollbacks and policy changes under a
load of concurrent requests fail none of them and never serve a version the policy did not
allow; a candidate that cannot load keeps the champion; promote → rollback → promote ends
consistent; a shadow that fails never fails the caller."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gateway.pb import admin_pb2 as apb
from gateway.pb import grpc_service_pb2_grpc as ipb_grpc
from tests import onnx_models
from tests.routing.serving_support import (
    FAIL_VALUE,
    Clients,
    features,
    gather_model,
    infer_request,
    start_gateway,
)
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

MODELS = ("swapped", "candidates", "flipflop", "shadowed")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    root = tmp_path_factory.mktemp("swap_load")
    server = start_gateway(root, dict.fromkeys(MODELS, model_files["logreg"]),
                           "[request_log]\nflush_interval_ms = 20\n")
    yield server
    server.stop()


@pytest.fixture
def clients(gateway: InProcessGateway) -> Iterator[Clients]:
    c = Clients(gateway.grpc_address, gateway.admin_address)
    yield c
    c.close()


# -- swap under load ----------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    sent: float
    received: float
    version: str
    error: str = ""


@dataclass(frozen=True)
class Allowed:
    """``versions`` may answer from the moment the change installing them started until
    the change replacing them finished (either side of a change is correct meanwhile)."""

    versions: frozenset[str]
    start: float
    end: float = math.inf


class Load:
    """``threads`` threads sending requests back to back until stopped."""

    def __init__(self, address: str, model: str, threads: int = 6) -> None:
        self._address = address
        self._model = model
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[Answer] = []
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                         for i in range(threads)]

    def _loop(self, index: int) -> None:
        with grpc.insecure_channel(self._address) as channel:
            stub = ipb_grpc.GRPCInferenceServiceStub(channel)
            n = 0
            while not self._stop.is_set():
                request = infer_request(self._model, f"t{index}-{n}", features(n % 64))
                n += 1
                sent = time.monotonic()
                try:
                    version = stub.ModelInfer(request, timeout=30).model_version
                    answer = Answer(sent, time.monotonic(), version)
                except grpc.RpcError as exc:
                    answer = Answer(sent, time.monotonic(), "", f"{exc.code()}: {exc.details()}")
                with self._lock:
                    self.answers.append(answer)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def test_swaps_under_load_fail_nothing_and_serve_only_allowed_versions(
        gateway: InProcessGateway, clients: Clients) -> None:
    model = "swapped"
    v2 = clients.register(model, onnx_models.logreg_like_model(seed=7))
    v3 = clients.register(model, onnx_models.logreg_like_model(seed=11))
    admin = clients.admin
    changes: list[tuple[str, Callable[[], object], set[int]]] = [
        (f"promote {v2}", lambda: admin.promote(model, v2), {v2}),
        ("rollback", lambda: admin.rollback(model), {1}),
        (f"promote {v3}", lambda: admin.promote(model, v3), {v3}),
        ("split 1/3 50/50", lambda: clients.set_split(model, {1: 50, v3: 50}), {1, v3}),
        ("split 2/3 sticky", lambda: clients.set_split(model, {v2: 30, v3: 70}, sticky=True),
         {v2, v3}),
        ("split 0/100", lambda: clients.set_split(model, {1: 0, v3: 100}), {v3}),
        ("clear", lambda: admin.call("ClearTrafficPolicy",
                                     apb.ClearTrafficPolicyRequest(model=model)), {v3}),
        (f"promote {v2}", lambda: admin.promote(model, v2), {v2}),
        ("rollback", lambda: admin.rollback(model), {v3}),
    ]
    timeline = [Allowed(frozenset({"1"}), -math.inf)]
    with Load(gateway.grpc_address, model) as load:
        started = time.monotonic()
        for label, change, versions in changes:
            # Let some traffic see the current state before changing it.
            floor = load.count() + 150
            wait_until(lambda f=floor: load.count() >= f, timeout=30,
                       what=f"traffic before {label}")
            begun = time.monotonic()
            change()
            ended = time.monotonic()
            timeline[-1] = Allowed(timeline[-1].versions, timeline[-1].start, ended)
            timeline.append(Allowed(frozenset(map(str, versions)), begun))
        floor = load.count() + 150
        wait_until(lambda: load.count() >= floor, timeout=30, what="traffic after the last change")
        elapsed = time.monotonic() - started
    answers = load.answers
    failed = [a for a in answers if a.error]
    assert failed == [], failed[:5]
    rate = len(answers) / elapsed
    assert rate >= 200, f"only {rate:.0f} requests/s"
    wrong = [a for a in answers if not any(
        a.version in allowed.versions and a.sent <= allowed.end and a.received >= allowed.start
        for allowed in timeline)]
    assert wrong == [], (len(wrong), wrong[:5])
    seen = Counter(a.version for a in answers)
    assert set(seen) == {"1", str(v2), str(v3)}
    final = clients.model(model)
    assert final.aliases["production"] == v3 and final.served_version == v3


# -- a candidate that cannot load ---------------------------------------------------------

def test_a_candidate_that_fails_to_load_keeps_the_champion(
        gateway: InProcessGateway, clients: Clients) -> None:
    model = "candidates"
    corrupt = clients.admin.register(model, onnx_models.logreg_like_model(seed=13),
                                     chunk=64 * 1024).version
    cold = clients.register(model, gather_model(offset=5))  # warm-up (zeros) fails
    artifact = (gateway.settings.effective_artifacts_dir / "sha256"
                / f"{corrupt.sha256}.onnx")
    assert artifact.is_file()
    artifact.write_bytes(artifact.read_bytes()[:-10] + b"corrupted!")
    for version, why in ((corrupt.version, "artifact"), (cold, "warm-up failed")):
        with pytest.raises(grpc.RpcError) as err:
            clients.admin.promote(model, version)
        assert why in err.value.details()
        state = clients.model(model)
        assert state.aliases["production"] == 1 and state.served_version == 1
        response = clients.inference.ModelInfer(infer_request(model, "after", features(1)),
                                                timeout=30)
        assert response.model_version == "1"
        failures = [e for e in clients.admin.events(model, action="promote.failed")
                    if e.version == version]
        assert failures and why in failures[0].detail["reason"]
    # Neither may a policy or a canary naming it change what is served.
    with pytest.raises(grpc.RpcError):
        clients.set_split(model, {1: 50, cold: 50})
    with pytest.raises(grpc.RpcError):
        clients.admin.call("StartCanary", apb.StartCanaryRequest(model=model, version=cold))
    status = clients.traffic(model)
    assert not status.HasField("policy") and list(status.serving_set) == [1]
    versions = Counter(clients.inference.ModelInfer(
        infer_request(model, f"c{i}", features(i)), timeout=30).model_version for i in range(50))
    assert versions == Counter({"1": 50})


# -- flip-flop ----------------------------------------------------------------------------

def test_promote_rollback_promote_ends_consistent(clients: Clients) -> None:
    model = "flipflop"
    v2 = clients.register(model, onnx_models.logreg_like_model(seed=7))
    clients.set_split(model, {1: 50, v2: 50})
    clients.admin.promote(model, v2)
    clients.admin.rollback(model)
    change = clients.admin.promote(model, v2)
    assert change.previous_version == 1 and change.version == v2
    state = clients.model(model)
    assert state.aliases["production"] == v2 and state.served_version == v2
    loaded = {load.version: load for load in state.loads if load.state == apb.LOAD_STATE_LOADED}
    assert set(loaded) == {v2} and loaded[v2].production
    assert not clients.traffic(model).HasField("policy")
    answers = Counter(clients.inference.ModelInfer(
        infer_request(model, f"f{i}", features(i)), timeout=30).model_version for i in range(40))
    assert answers == Counter({str(v2): 40})
    events = [(e.action, e.version) for e in reversed(clients.admin.events(model))]
    moves = [(a, v) for a, v in events if a.startswith("alias.") or a == "experiment.end"]
    assert [v for a, v in moves if a.startswith("alias.")][-3:] == [v2, 1, v2], moves
    # Only the first promotion had an experiment to end.
    assert [a for a, _ in moves].count("experiment.end") == 1, moves


# -- a shadow that fails ------------------------------------------------------------------

def test_a_failing_shadow_never_fails_or_changes_the_callers_answer(
        gateway: InProcessGateway, clients: Clients) -> None:
    model = "shadowed"
    broken = clients.register(model, gather_model())
    clients.set_split(model, {1: 100}, shadows={broken: 1.0})
    n = 300
    x = features(0, first=FAIL_VALUE)  # every shadow copy fails inside onnxruntime
    futures = [clients.inference.ModelInfer.future(infer_request(model, f"s{i}", x), timeout=30)
               for i in range(n)]
    answers = [f.result() for f in futures]
    assert {a.model_version for a in answers} == {"1"}
    assert {a.parameters["routing_arm"].string_param for a in answers} == {"1"}

    def shadow_done() -> apb.ArmStatistics | None:
        arm = next(a for a in clients.traffic(model).arms if a.shadow)
        return arm if arm.mirrored + arm.dropped >= n and arm.shadow_failed >= arm.mirrored \
            else None

    arm = wait_until(shadow_done, timeout=30, what="every shadow copy to run")
    assert arm.version == broken and arm.mirrored > 0 and arm.shadow_failed == arm.mirrored
    assert not arm.has_agreement
    primary = next(a for a in clients.traffic(model).arms if not a.shadow)
    assert primary.requests == n and primary.errors == 0
    # The failed copies are logged as shadow records of the shadow version.
    assert gateway.app.request_log is not None and gateway.app.request_log.flush(30)
    shadow_records = list(clients.admin.call("QueryRequests", apb.QueryRequestsRequest(
        model=model, version=broken)))
    assert shadow_records and all(r.shadow and r.status != "OK" for r in shadow_records)
