"""The lifecycle inside a real gateway, driven over the admin API and the CLI: runs,
datasets, retrain, triggers (seeded once, then the database rules), roles, errors, and
the stop order (a run still training when the gateway stops is cancelled and recorded)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from examples.demo_clients import Traffic
from gateway.pb import admin_pb2 as apb
from lifecycle.db import Database, make_engine
from lifecycle.registry import Registry
from lifecycle.runs import RunStore
from tests.admin.cli_support import failed, gateway_cli, ok
from tests.admin.helpers import Admin
from tests.lifecycle_loop.estimators import CRASH_FLAG_ENV, SLEEP_ENV
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

OPERATOR, READER = "ops-secret", "viewer-secret"
AUTH = f"""
[auth.tokens.ops]
token = "{OPERATOR}"
role = "operator"

[auth.tokens.viewer]
token = "{READER}"
role = "reader"
"""
LIFECYCLE = """
[models.fraud.lifecycle]
estimator = "{estimator}"
window_s = 3600
min_rows = 100
min_per_class = 5
timeout_s = 120

[models.fraud.lifecycle.gates]
# These tests are about the plumbing: any candidate passes.
max_auc_drop = 1.0

[models.fraud.lifecycle.deploy]
policy = "direct"

[[models.fraud.lifecycle.triggers]]
kind = "interval"
seconds = 3600
"""
pytestmark = pytest.mark.slow


def config(root: Path, artifact: Path, *, estimator: str = "sklearn.linear_model."
           "LogisticRegression", loop: str = "") -> Path:
    path = root / "gateway.toml"
    path.write_text(AUTH + "\n[lifecycle]\npoll_s = 1\nallowed_estimators = "
                    '["sklearn.", "tests.lifecycle_loop.estimators."]\n' + loop + "\n"
                    f'[models.fraud]\nartifact = "{artifact}"\n\n'
                    f'[models.plain]\nartifact = "{artifact}"\n'
                    + LIFECYCLE.format(estimator=estimator))
    return path


def start(path: Path, data: Path) -> InProcessGateway:
    return InProcessGateway.start_from(path, data)


def labelled_traffic(gateway: InProcessGateway, admin: Admin, rows: int) -> None:
    """``rows`` requests with their labels, until every label is in the request log."""
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        traffic = Traffic(channel, rate=400, label_share=1.0, label_delay_s=0.0,
                          prefix=f"t{time.monotonic_ns()}").start()
        wait_until(lambda: len(traffic.snapshot()) >= rows, 30)
        traffic.stop()
        assert not traffic.failures and traffic.labels_rejected == 0
    wait_until(lambda: len(list(admin.call("QueryRequests", apb.QueryRequestsRequest(
        model="fraud", has_feedback=True, omit_payload=True)))) >= rows, 30)


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    root = tmp_path_factory.mktemp("lifecycle-admin")
    server = start(config(root, model_files["logreg"]), root / "data")
    yield server
    server.stop()


@pytest.fixture
def admin(gateway: InProcessGateway) -> Iterator[Admin]:
    with grpc.insecure_channel(gateway.admin_address) as channel:
        yield Admin(channel, OPERATOR)


def test_triggers_are_seeded_from_config_then_changed_over_the_api(admin: Admin) -> None:
    listed = admin.call("ListTriggers", apb.ListTriggersRequest(model="fraud"))
    assert (listed.revision, listed.actor, listed.scheduler_running) == (1, "config", True)
    (interval,) = listed.triggers
    assert json_format.MessageToDict(interval.spec) == {"kind": "interval", "seconds": 3600}
    assert interval.HasField("next_fire_time")

    request = apb.SetTriggersRequest(model="fraud")
    request.triggers.add().update({"kind": "new_labels", "min_labels": 5000,
                                   "check_every_s": 600})
    request.triggers.add().update({"kind": "manual"})
    changed = admin.call("SetTriggers", request)
    assert (changed.revision, changed.actor) == (2, "ops")
    assert [t.description for t in changed.triggers] == ["new_labels >= 5000", "manual"]
    assert changed.triggers[0].HasField("next_fire_time")
    assert not changed.triggers[1].HasField("next_fire_time")

    bad = apb.SetTriggersRequest(model="fraud")
    bad.triggers.add().update({"kind": "drift", "threshold": -1})
    with pytest.raises(grpc.RpcError) as caught:
        admin.call("SetTriggers", bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "triggers.0.threshold" in caught.value.details()
    assert code_of(lambda: admin.call("SetTriggers", apb.SetTriggersRequest(
        model="plain"))) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: admin.call("SetTriggers", request, token=READER)
                   ) == grpc.StatusCode.PERMISSION_DENIED
    assert admin.call("ListTriggers", apb.ListTriggersRequest(model="fraud"),
                      token=READER).revision == 2


def test_a_retrain_without_labelled_data_fails_with_the_reason(admin: Admin) -> None:
    run = admin.call("Retrain", apb.RetrainRequest(model="fraud", reason="just checking"))
    # Retrain returns once the run is recorded; an empty snapshot may already have failed it.
    assert run.status in ("queued", "running", "failed")
    assert (run.trigger, run.reason, run.actor) == ("manual", "just checking", "ops")
    done = wait_until(lambda: (r := admin.call("GetRun", apb.GetRunRequest(id=run.id))
                               ).status not in ("queued", "running") and r)
    assert done.status == "failed"
    assert done.error.startswith("snapshot: the dataset is empty")
    assert [(s.name, s.status) for s in done.steps] == [("snapshot", "failed")]
    assert code_of(lambda: admin.call("Retrain", apb.RetrainRequest(model="plain"))
                   ) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: admin.call("Retrain", apb.RetrainRequest(model="fraud"),
                                      token=READER)) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: admin.call("GetRun", apb.GetRunRequest(id=10_000))
                   ) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: admin.call("ListRuns", apb.ListRunsRequest(model="nope"))
                   ) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: admin.call("ListRuns", apb.ListRunsRequest(status="done"))
                   ) == grpc.StatusCode.INVALID_ARGUMENT


def test_the_cli_retrains_on_logged_traffic_and_shows_the_history(
        gateway: InProcessGateway, admin: Admin) -> None:
    labelled_traffic(gateway, admin, 400)
    target = gateway.admin_address
    waited = ok(gateway_cli(target, "retrain", "fraud", "--wait", "--reason", "cli test",
                            timeout=180))
    assert "started; waiting for it to end" in waited
    for step in ("snapshot", "train", "convert", "evaluate", "gates", "register", "deploy"):
        assert f"  {step}" in waited
    assert "succeeded (promoted, version 2)" in waited

    (run,) = admin.call("ListRuns", apb.ListRunsRequest(model="fraud", status="succeeded")).runs
    listing = ok(gateway_cli(target, "runs", "list", "fraud"))
    row = next(line.split() for line in listing.splitlines()
               if line.split()[0] == str(run.id))
    assert row[:7] == [str(run.id), "fraud", "succeeded", "manual", "promoted", "2", "1"]
    shown = ok(gateway_cli(target, "runs", "show", str(run.id), "--logs"))
    assert "reason:      cli test" in shown and "outcome:     promoted" in shown
    assert "gates     succeeded" in shown and "passed" in shown
    assert "--- snapshot" in shown

    datasets = admin.call("ListDatasets", apb.ListDatasetsRequest(model="fraud")).datasets
    assert datasets[0].run_id == run.id and datasets[0].source == "request_log"
    assert datasets[0].rows >= 400 and len(datasets[0].features) == 20
    npz = gateway.settings.effective_artifacts_dir / "sha256" / \
        f"{datasets[0].artifact_sha256}.npz"
    assert npz.is_file()
    assert f"{datasets[0].rows}" in ok(gateway_cli(target, "datasets", "list", "fraud"))
    assert admin.model("fraud").aliases["production"] == 2

    triggers = ok(gateway_cli(target, "triggers", "set", "fraud",
                              "quality_drop:threshold=0.5,window_s=600", "manual"))
    assert "quality_drop accuracy < 0.5" in triggers and "set by ops" in triggers
    assert "quality_drop" in ok(gateway_cli(target, "triggers", "list", "fraud"))
    assert "INVALID_ARGUMENT" in failed(gateway_cli(target, "triggers", "set", "fraud",
                                                    "drift:share=2"))
    assert "FAILED_PRECONDITION" in failed(gateway_cli(target, "retrain", "plain"))


def test_with_the_lifecycle_off_history_reads_but_nothing_runs(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    server = start(config(tmp_path, model_files["logreg"], loop="enabled = false\n"),
                   tmp_path / "data")
    try:
        with grpc.insecure_channel(server.admin_address) as channel:
            admin = Admin(channel, OPERATOR)
            assert list(admin.call("ListRuns", apb.ListRunsRequest()).runs) == []
            listed = admin.call("ListTriggers", apb.ListTriggersRequest(model="fraud"))
            assert (listed.revision, listed.scheduler_running) == (0, False)
            with pytest.raises(grpc.RpcError) as caught:
                admin.call("Retrain", apb.RetrainRequest(model="fraud"))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "disabled" in caught.value.details()
    finally:
        server.stop()


def test_a_stop_cancels_a_training_run_and_triggers_survive_a_restart(
        tmp_path: Path, model_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SLEEP_ENV, "120")
    path = config(tmp_path, model_files["logreg"],
                  estimator="tests.lifecycle_loop.estimators.SleepingClassifier")
    server = start(path, tmp_path / "data")
    try:
        with grpc.insecure_channel(server.admin_address) as channel:
            admin = Admin(channel, OPERATOR)
            request = apb.SetTriggersRequest(model="fraud")
            request.triggers.add().update({"kind": "cron", "cron": "0 3 * * *"})
            assert admin.call("SetTriggers", request).revision == 2
            labelled_traffic(server, admin, 150)
            run = admin.call("Retrain", apb.RetrainRequest(model="fraud"))
            wait_until(lambda: any(s.name == "train" for s in admin.call(
                "GetRun", apb.GetRunRequest(id=run.id)).steps), 30)
            assert code_of(lambda: admin.call("Retrain", apb.RetrainRequest(model="fraud"))
                           ) == grpc.StatusCode.ABORTED
    finally:
        stopping = time.monotonic()
        server.stop()
    # The scheduler stops first and kills the sleeping child: no 120 s wait.
    assert time.monotonic() - stopping < 30
    database = Database(make_engine(f"sqlite:///{tmp_path / 'data' / 'gateway.db'}"))
    try:
        cancelled = RunStore(database).get(run.id)
        assert cancelled.status == "failed" and "cancelled" in cancelled.error
        assert Registry(database).get_aliases("fraud")["production"] == 1
    finally:
        database.close()

    again = start(path, tmp_path / "data")
    try:
        with grpc.insecure_channel(again.admin_address) as channel:
            listed = Admin(channel, OPERATOR).call("ListTriggers",
                                                   apb.ListTriggersRequest(model="fraud"))
        # The database rules: the config's interval trigger is not seeded again.
        assert (listed.revision, listed.actor) == (2, "ops")
        assert [t.description for t in listed.triggers] == ["cron '0 3 * * *'"]
    finally:
        again.stop()


def test_a_crashing_trainer_fails_its_run_while_serving_goes_on(
        tmp_path: Path, model_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "crash"
    flag.touch()
    monkeypatch.setenv(CRASH_FLAG_ENV, str(flag))
    server = start(config(tmp_path, model_files["logreg"], estimator="tests.lifecycle_loop."
                          "estimators.CrashingLogisticRegression"), tmp_path / "data")
    try:
        with grpc.insecure_channel(server.admin_address) as admin_channel, \
                grpc.insecure_channel(server.grpc_address) as channel:
            admin = Admin(admin_channel, OPERATOR)
            labelled_traffic(server, admin, 150)
            traffic = Traffic(channel, rate=200, label_share=0.0, prefix="during").start()
            try:
                def finished(run_id: int) -> apb.Run:
                    return wait_until(lambda: (r := admin.call("GetRun", apb.GetRunRequest(
                        id=run_id))).status not in ("queued", "running") and r, 60)

                crashed = finished(admin.call("Retrain", apb.RetrainRequest(model="fraud")).id)
                flag.unlink()
                healthy = finished(admin.call("Retrain", apb.RetrainRequest(model="fraud")).id)
            finally:
                traffic.stop()
        assert crashed.status == "failed"
        assert crashed.error.startswith("train: the training process died without a result "
                                        "(exit code 3)")
        assert [(s.name, s.status) for s in crashed.steps][-1] == ("train", "failed")
        assert (healthy.status, healthy.outcome) == ("succeeded", "promoted")
        assert len(traffic.snapshot()) > 100 and not traffic.failures
    finally:
        server.stop()
