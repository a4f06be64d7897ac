"""The closed loop end to end, on a real ``gateway serve`` process driven over gRPC only:
the demo's scenario, shortened (one trigger at a time, so the recorded reason is
deterministic), and the two ways a worse model is kept out of production — the gates
refuse it, or its canary loses on live labels and aborts by itself.

After each scenario the gateway's own records are read back from its database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from examples.demo import TOKEN, DemoOptions, demo_config, run_demo
from examples.demo_clients import GatewayProcess, Traffic, Watcher
from gateway.pb import admin_pb2 as apb
from lifecycle.db import Database, make_engine
from lifecycle.domain import PRODUCTION
from lifecycle.registry import Registry
from lifecycle.runs import RunStore
from tests.admin.cli_support import gateway_cli, ok
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
STEPS = ["snapshot", "train", "convert", "evaluate", "gates", "register", "deploy"]
# Shortened: 10 s before the shift, a two-step canary of 2 s per step, 5 s after. The
# latency guard is loose: these tests judge quality, on a machine other tests load too.
QUICK = {"before_s": 10.0, "after_s": 5.0, "deadline_s": 150.0,
         "canary_steps": (50.0, 100.0), "canary_min_seconds": 2.0, "p99_slack_ms": 500.0}


def open_database(data_dir: Path) -> Database:
    return Database(make_engine(f"sqlite:///{data_dir / 'gateway.db'}"))


def labels_in_phase(traffic: Traffic, count: int, phase: str) -> None:
    start = traffic.labels_sent
    wait_until(lambda: traffic.labels_sent - start >= count, 60, f"{count} labels in {phase}")


@pytest.mark.parametrize("trigger", ["drift", "quality_drop"])
def test_the_shift_is_noticed_and_a_better_version_takes_over(
        trigger: str, tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(DemoOptions(triggers=(trigger,), data_dir=tmp_path / "demo", **QUICK),
                      lines.append)
    assert result.closed, (result.why, lines[-40:])
    assert result.failed == 0 and result.labels_rejected == 0
    assert result.run is not None and result.run["trigger"] == trigger
    assert result.run["reason"].startswith(f"{trigger}: ")
    before, during, after = (result.accuracy_before[0], result.accuracy_during[0],
                             result.accuracy_after[0])
    assert before is not None and during is not None and after is not None
    assert during < before - 0.1 and after > during + 0.05

    database = open_database(tmp_path / "demo")
    try:
        runs = RunStore(database).list("fraud")
        assert len(runs) == 1  # one shift, one run: the cooldown keeps the trigger quiet
        run = RunStore(database).get(runs[0].id)
        assert (run.trigger, run.status, run.outcome) == (trigger, "succeeded", "canary")
        assert [(s.name, s.status) for s in run.steps] == [(n, "succeeded") for n in STEPS]
        gates = run.step("gates")
        assert gates is not None and gates.detail["report"]["passed"]
        registry = Registry(database)
        assert registry.get_aliases("fraud")[PRODUCTION] == run.candidate_version == 2
        lineage = registry.get_version("fraud", 2).metadata["lineage"]
        assert (lineage["run_id"], lineage["trigger"], lineage["parent_version"]) == (
            run.id, trigger, 1)
        assert lineage["dataset"]["id"] == run.dataset_id
        actions = [e.action for e in registry.list_events(model="fraud", limit=100)]
        assert "canary.promoted" in actions and "canary.aborted" not in actions
    finally:
        database.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """The demo's gateway with no triggers: only ``gateway retrain`` starts runs."""
    # Steps long enough for the delayed labels to reach the live-quality guard: a
    # canary judged on too few labels would be promoted on latency and errors alone.
    options = DemoOptions(triggers=(), **{**QUICK, "canary_min_seconds": 6.0})
    config = tmp_path / "gateway.toml"
    config.write_text(demo_config(options))
    process = GatewayProcess(config, tmp_path / "data").start()
    yield process
    process.stop()


def test_a_worse_candidate_never_reaches_production(
        gateway: GatewayProcess, tmp_path: Path) -> None:
    """A labelling bug flips the labels. (1) Fixed just before the run: the newest rows,
    the holdout, are right again, the candidate learned the inverted rule, and the gates
    reject it. (2) Still broken during the run: the candidate even wins on the (wrong)
    holdout and passes the gates — but once the labels are right again its canary loses
    on live quality and aborts. Production stays on version 1 throughout."""
    target = gateway.admin_target
    seen: list[str] = []
    inference = grpc.insecure_channel(gateway.inference_target)
    admin = grpc.insecure_channel(target)
    watcher = Watcher(admin, TOKEN, emit=seen.append).start()
    traffic = Traffic(inference, rate=150, label_share=0.6, label_delay_s=0.5)
    try:
        # Each phase lasts until enough labels of its kind reached the gateway: at
        # 90 labels/s, a poisoned phase covers the whole 7 s training window.
        traffic.poison = True
        traffic.start()
        labels_in_phase(traffic, 630, "the mislabelled phase")
        traffic.poison = False
        labels_in_phase(traffic, 270, "the holdout labelled right again")
        gated = gateway_cli(target, "retrain", "fraud", "--wait", "--json", token=TOKEN,
                            timeout=120)
        assert gated.returncode == 1, gated.stderr
        assert "rejected" in gated.stderr

        traffic.poison = True
        labels_in_phase(traffic, 720, "the second mislabelled phase")
        run = watcher.call("Retrain", apb.RetrainRequest(model="fraud")).id
        # The labels are right again once the snapshot is taken, before the candidate
        # serves a single request.
        wait_until(lambda: any(s.name == "snapshot" and s.status == "succeeded" for s in
                             watcher.call("GetRun", apb.GetRunRequest(id=run)).steps),
                 60, "the snapshot of run 2")
        traffic.poison = False
        shipped = wait_until(lambda: (r := watcher.call("GetRun", apb.GetRunRequest(id=run))
                                    ).status not in ("queued", "running") and r, 120,
                           "run 2 ended")
        assert (shipped.status, shipped.outcome, shipped.candidate_version) == (
            "succeeded", "canary", 3)
        wait_until(lambda: 3 in watcher.rejected, 60,
                 f"the canary of version 3 aborted; seen: {seen}")
    finally:
        traffic.stop()
        watcher.stop()
        inference.close()
        admin.close()
    assert not traffic.failures, traffic.failures[:5]
    assert watcher.production == 1
    history = ok(gateway_cli(target, "versions", "list", "fraud", token=TOKEN))
    gateway.stop()

    database = open_database(gateway.data_dir)
    try:
        runs = {r.id: RunStore(database).get(r.id) for r in RunStore(database).list("fraud")}
        first, second = runs[1], runs[2]
        assert (first.status, first.outcome, first.candidate_version) == (
            "rejected", "rejected", 2)
        assert first.error.startswith("gates: ")
        report = first.step("gates").detail["report"]  # type: ignore[union-attr]
        assert not report["passed"]
        assert (second.status, second.outcome, second.candidate_version) == (
            "succeeded", "canary", 3)
        registry = Registry(database)
        assert registry.get_aliases("fraud")[PRODUCTION] == 1
        assert registry.get_version("fraud", 2).status == "rejected"
        assert registry.get_version("fraud", 3).status == "rejected"
        aborted = registry.list_events(model="fraud", action="canary.aborted")
        assert len(aborted) == 1 and aborted[0].version == 3
        assert "live quality" in aborted[0].detail["reason"]
        assert not registry.list_events(model="fraud", action="canary.promoted")
    finally:
        database.close()
    assert all(word in history for word in ("rejected", "production"))
