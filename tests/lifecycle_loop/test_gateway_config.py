"""The lifecycle as the gateway configures, maps and converts it: ``[lifecycle]`` and
``[models.NAME.lifecycle]`` settings, the error → status table, the admin converters, the
CLI's trigger syntax and the dataset artifact suffix. No server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from gateway.cli.lifecycle_cmds import parse_trigger
from gateway.pb import admin_pb2 as pb
from gateway.rpc import lifecycle_converters as convert
from gateway.rpc.status import status_for
from gateway.settings import ConfigError, Settings, load_settings
from lifecycle.artifacts import ArtifactStore
from lifecycle.datasets import DatasetArrays
from lifecycle.errors import InvalidArgument
from lifecycle.loop_config import TriggerSpec
from lifecycle.loop_errors import (
    DatasetNotFound,
    LifecycleConfigError,
    LifecycleNotConfigured,
    RunInProgress,
    RunNotFound,
)
from lifecycle.loop_service import TriggerListing, TriggerState
from tests.lifecycle_loop.conftest import Loop
from tests.lifecycle_loop.helpers import MODEL

LIFECYCLE = """
[models.fraud]
bootstrap = "synthetic_fraud"

[models.fraud.lifecycle]
estimator = "sklearn.ensemble.HistGradientBoostingClassifier"
params = {max_iter = 50}
window_s = 600

[models.fraud.lifecycle.gates]
min_auc = 0.7

[models.fraud.lifecycle.deploy]
policy = "canary"
steps = [10, 50, 100]

[models.fraud.lifecycle.deploy.guards]
max_quality_drop = 0.03

[[models.fraud.lifecycle.triggers]]
kind = "drift"
threshold = 0.25

[[models.fraud.lifecycle.triggers]]
kind = "cron"
cron = "0 3 * * *"
"""


def settings_of(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_settings(path, env={})


def config_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        settings_of(tmp_path, text)
    assert caught.value.source == str(tmp_path / "gateway.toml")
    return caught.value


# --------------------------------------------------------------------------- settings


def test_a_model_lifecycle_table_is_parsed_into_its_config(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, LIFECYCLE)
    model = settings.model("fraud")
    assert model is not None and model.lifecycle is not None
    config = model.lifecycle
    assert config.estimator == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert dict(config.params) == {"max_iter": 50}
    assert config.window_s == 600.0
    assert config.gates.min_auc == 0.7
    assert config.deploy.policy == "canary" and config.deploy.steps == (10.0, 50.0, 100.0)
    assert dict(config.deploy.guards) == {"max_quality_drop": 0.03}
    assert [t.kind for t in config.triggers] == ["drift", "cron"]
    assert config.triggers[0].threshold == 0.25
    assert settings.lifecycle_enabled


def test_the_loop_is_on_by_default_only_when_a_model_has_a_lifecycle(tmp_path: Path) -> None:
    plain = '[models.fraud]\nbootstrap = "synthetic_fraud"\n'
    assert not settings_of(tmp_path, plain).lifecycle_enabled
    assert settings_of(tmp_path, "[lifecycle]\nenabled = true\n" + plain
                       ).lifecycle_enabled
    off = settings_of(tmp_path, "[lifecycle]\nenabled = false\n" + LIFECYCLE)
    assert not off.lifecycle_enabled


def test_loop_settings_are_read_and_checked(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, '[lifecycle]\npoll_s = 2\nmax_concurrent_runs = 2\n'
                                     'nice = 5\nworkdir = "train"\nstale_after_s = 30\n'
                                     'train_cpu_share = 0.25\n'
                                     'allowed_estimators = ["sklearn.", "xgboost."]\n')
    loop = settings.lifecycle
    assert (loop.poll_s, loop.max_concurrent_runs, loop.nice, loop.stale_after_s) == (
        2.0, 2, 5, 30.0)
    assert loop.workdir == (tmp_path / "train").resolve()
    assert loop.train_cpu_share == 0.25
    assert settings_of(tmp_path, "").lifecycle.train_cpu_share == 0.5
    for bad, shown in (("0", "0"), ("1.5", "1.5"), ("true", "True")):
        error = config_error(tmp_path, f"[lifecycle]\ntrain_cpu_share = {bad}\n")
        assert (error.key, error.reason) == (
            "lifecycle.train_cpu_share", f"expected a number within (0, 1], got {shown}")
    assert loop.allowed_estimators == ("sklearn.", "xgboost.")
    assert config_error(tmp_path, "[lifecycle]\npoll_s = 0\n").key == "lifecycle.poll_s"
    assert config_error(tmp_path, "[lifecycle]\nnice = 40\n").key == "lifecycle.nice"
    assert config_error(tmp_path, "[lifecycle]\nenabled = 1\n").key == "lifecycle.enabled"
    unknown = config_error(tmp_path, "[lifecycle]\npol_s = 1\n")
    assert (unknown.key, unknown.reason) == ("lifecycle.pol_s", "unknown key")


@pytest.mark.parametrize(("table", "key", "reason"), [
    ("[models.fraud.lifecycle.gates]\nmin_auc = 2\n", "models.fraud.lifecycle.gates.min_auc",
     "must be <= 1"),
    ("[models.fraud.lifecycle]\nwindow = 5\n", "models.fraud.lifecycle.window",
     "unknown key"),
    ("[[models.fraud.lifecycle.triggers]]\nkind = \"drift\"\n"
     "[[models.fraud.lifecycle.triggers]]\nkind = \"interval\"\n",
     "models.fraud.lifecycle.triggers.1.seconds", "required"),
    ("[[models.fraud.lifecycle.triggers]]\nkind = \"cron\"\ncron = \"every day\"\n",
     "models.fraud.lifecycle.triggers.0.cron", "not a crontab expression"),
    ("[models.fraud.lifecycle.deploy]\npolicy = \"blue-green\"\n",
     "models.fraud.lifecycle.deploy.policy", "expected one of manual, direct, shadow, canary"),
    ("[models.fraud.lifecycle.deploy]\nsteps = [50, 20]\n",
     "models.fraud.lifecycle.deploy.steps", "must increase strictly"),
    ("[models.fraud.lifecycle]\nestimator = \"os.system\"\n",
     "models.fraud.lifecycle.estimator", "outside [lifecycle] allowed_estimators"),
])
def test_a_bad_lifecycle_value_names_file_key_and_reason(
        tmp_path: Path, table: str, key: str, reason: str) -> None:
    error = config_error(tmp_path, '[models.fraud]\nbootstrap = "synthetic_fraud"\n' + table)
    assert error.key == key
    assert reason in error.reason


# ------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(("error", "code"), [
    (RunInProgress("fraud", 3), grpc.StatusCode.ABORTED),
    (LifecycleNotConfigured("fraud"), grpc.StatusCode.FAILED_PRECONDITION),
    (RunNotFound(7), grpc.StatusCode.NOT_FOUND),
    (DatasetNotFound("9"), grpc.StatusCode.NOT_FOUND),
    (LifecycleConfigError("triggers.0.threshold", "must be > 0"),
     grpc.StatusCode.INVALID_ARGUMENT),
])
def test_lifecycle_errors_map_through_the_one_status_table(
        error: Exception, code: grpc.StatusCode) -> None:
    assert status_for(error) == (code, str(error))


# ----------------------------------------------------------------------- converters


def test_a_run_converts_with_its_steps_and_links(loop: Loop) -> None:
    runs = loop.runs
    run = runs.create(MODEL, trigger="drift", reason="drift: psi", actor="scheduler",
                      params={"config": {"window_s": 60.0}})
    runs.start(run.id)
    position = runs.begin_step(run.id, "snapshot", {"params": {"window_s": 60.0}})
    runs.end_step(run.id, position, "succeeded", duration_s=0.25,
                  detail={"dataset": {"id": 4, "rows": 300}}, log="300 rows")
    runs.update(run.id, metrics={"roc_auc": 0.9, "nan": float("nan")}, dataset_id=4,
                champion_version=1)
    runs.finish(run.id, "rejected", outcome="rejected", error="gates: auc")
    message = convert.run(runs.get(run.id))
    assert (message.id, message.model, message.status, message.trigger, message.reason) == (
        run.id, MODEL, "rejected", "drift", "drift: psi")
    assert (message.dataset_id, message.champion_version, message.candidate_version) == (4, 1, 0)
    assert json_format.MessageToDict(message.metrics) == {"roc_auc": 0.9, "nan": None}
    assert message.HasField("end_time") and message.error == "gates: auc"
    (step,) = message.steps
    assert (step.name, step.status, step.duration_s, step.log) == (
        "snapshot", "succeeded", 0.25, "300 rows")
    assert json_format.MessageToDict(step.detail)["dataset"] == {"id": 4, "rows": 300}
    queued = convert.run(runs.get(runs.create(MODEL, trigger="manual", reason="",
                                              actor="ops").id))
    assert not queued.HasField("start_time") and not queued.HasField("end_time")


def test_a_dataset_converts_with_window_and_feature_stats(loop: Loop) -> None:
    datasets = loop.datasets
    arrays = DatasetArrays(np.arange(40, dtype=np.float32).reshape(20, 2),
                           np.array([0, 1] * 10), np.arange(20, dtype=np.int64) + 1_000_000)
    dataset, _ = datasets.save(MODEL, arrays, source="request_log", window=(1_000_000, 2_000_000),
                               feature_names=["a", "b"])
    message = convert.dataset(dataset)
    assert (message.rows, message.n_features, message.source) == (20, 2, "request_log")
    assert message.window_start.ToMicroseconds() == 1_000_000
    assert message.window_end.ToMicroseconds() == 2_000_000
    assert dict(message.label_counts) == {"0": 10, "1": 10}
    assert [f.name for f in message.features] == ["a", "b"]
    assert message.features[0].max == 38.0 and message.run_id == 0


def test_trigger_lists_round_trip_through_structs() -> None:
    specs = (TriggerSpec.from_json({"kind": "new_labels", "min_labels": 250}),
             TriggerSpec.from_json({"kind": "interval", "seconds": 60}))
    fire = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    listing = TriggerListing(MODEL, (TriggerState(specs[0], fire), TriggerState(specs[1], None)),
                             3, fire, "ops", True)
    message = convert.trigger_list(listing)
    assert message.revision == 3 and message.actor == "ops" and message.scheduler_running
    assert message.triggers[0].description == "new_labels >= 250"
    assert message.triggers[0].next_fire_time.ToDatetime(tzinfo=UTC) == fire
    assert not message.triggers[1].HasField("next_fire_time")
    # A Struct holds numbers as doubles; counts come back as integers the parser accepts.
    request = pb.SetTriggersRequest(model=MODEL, triggers=[t.spec for t in message.triggers])
    parsed = [TriggerSpec.from_json(s) for s in convert.trigger_specs(request.triggers)]
    assert tuple(parsed) == specs


@pytest.mark.parametrize(("text", "spec"), [
    ("manual", {"kind": "manual"}),
    ("interval:seconds=3600", {"kind": "interval", "seconds": 3600}),
    ("drift:metric=ks,threshold=0.15,share=0.5",
     {"kind": "drift", "metric": "ks", "threshold": 0.15, "share": 0.5}),
    ("cron:0,30 3 * * *", {"kind": "cron", "cron": "0,30 3 * * *"}),
    ("quality_drop: threshold=0.8 , output=label",
     {"kind": "quality_drop", "threshold": 0.8, "output": "label"}),
])
def test_the_cli_trigger_syntax(text: str, spec: dict[str, object]) -> None:
    assert parse_trigger(text) == spec
    TriggerSpec.from_json(spec)


@pytest.mark.parametrize("text", ["", ":x=1", "drift:threshold", "drift:=3"])
def test_the_cli_refuses_a_malformed_trigger(text: str) -> None:
    with pytest.raises(ValueError):
        parse_trigger(text)


# ------------------------------------------------------------------------ artifacts


def test_datasets_are_stored_as_npz_beside_the_models(tmp_path: Path) -> None:
    models = ArtifactStore(tmp_path / "artifacts")
    arrays = ArtifactStore(tmp_path / "artifacts", suffix=".npz")
    sha, _ = models.put(b"onnx bytes")
    data, _ = arrays.put(b"npz bytes")
    assert models.path(sha).name == f"{sha}.onnx" and models.read(sha) == b"onnx bytes"
    assert arrays.path(data) == tmp_path / "artifacts" / "sha256" / f"{data}.npz"
    assert arrays.read(data) == b"npz bytes"
    with pytest.raises(InvalidArgument):
        ArtifactStore(tmp_path, suffix="npz")
