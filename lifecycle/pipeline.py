"""One retraining run, end to end, with every step recorded on the run.

    snapshot  labelled traffic of the window (+ the champion's dataset when configured),
              validated, stored as a dataset version
    train     the estimator in a spawned child (``lifecycle.training``) on the older rows;
              the newest ``holdout_fraction`` is held out
    convert   the child's skl2onnx graph checked against the model's serving signature,
              then parity: onnxruntime vs the estimator on the holdout
    evaluate  candidate and champion on the same holdout (``lifecycle.evaluation``)
    gates     ``lifecycle.gates``; the report is stored with the version
    register  the version with its lineage — ``registered``, or ``rejected`` when a gate
              failed (and the run ends ``rejected``)
    deploy    by policy (``lifecycle.rollout``)

Each step is a ``run_steps`` row (params and metrics in ``detail``, its log, timings).
A step that raises fails the run with the reason (``RunFailure``) or the traceback
(anything else); nothing after it happens, so a failed run never registers a version
and never touches serving. The run's outcome and a ``run.finished`` event are recorded.
"""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.artifacts import ArtifactStore
from lifecycle.datasets import (
    Dataset,
    DatasetArrays,
    DatasetSpec,
    DatasetStore,
    snapshot_from_log,
    split_by_time,
    validate,
)
from lifecycle.domain import PRODUCTION, Model
from lifecycle.errors import InvalidArtifact, LifecycleError
from lifecycle.evaluation import Evaluation, evaluate, parity_max_abs_diff
from lifecycle.gates import GateReport, check_gates
from lifecycle.loop_config import LifecycleConfig
from lifecycle.loop_errors import (
    DatasetInvalid,
    ParityFailed,
    RunCancelled,
    RunFailure,
    TrainingFailed,
)
from lifecycle.registry import Registry
from lifecycle.request_store import RequestStore
from lifecycle.rollout import Rollout
from lifecycle.runs import Run, RunStore
from lifecycle.training import Trainer, TrainSpec
from lifecycle.uploads import validate_onnx

__all__ = ["Retrainer", "code_version"]

log = logging.getLogger("lifecycle.pipeline")
_DTYPES = {"FP32": "float32", "FP64": "float64"}
_HEARTBEAT_EVERY_S = 5.0


def code_version() -> dict[str, str]:
    """The package version and, when the code runs from a git checkout, its commit."""
    try:
        package = importlib.metadata.version("inference-gateway")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    commit = ""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5, check=False)
        if done.returncode == 0:
            commit = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": package, "commit": commit}


@dataclass
class _Step:
    detail: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def log(self, line: str) -> None:
        self.lines.append(line)


class _Recorder:
    def __init__(self, runs: RunStore, run_id: int, cancel: threading.Event,
                 fence: Callable[[], object] | None) -> None:
        self.runs = runs
        self.run_id = run_id
        self.cancel = cancel
        self.fence = fence
        self._beat = time.monotonic()

    @contextmanager
    def step(self, name: str, **params: Any) -> Iterator[_Step]:
        if self.cancel.is_set():
            raise RunCancelled(f"cancelled before step {name}: the scheduler is stopping")
        if self.fence is not None:
            try:
                self.fence()
            except RunFailure as exc:
                exc.step = name
                raise
        position = self.runs.begin_step(self.run_id, name, {"params": params})
        started = time.monotonic()
        step = _Step()
        try:
            yield step
        except BaseException as exc:
            if isinstance(exc, RunFailure):
                exc.step = name  # the reason names the step it stopped at
            step.log(f"failed: {exc}")
            self.runs.end_step(self.run_id, position, "failed",
                               duration_s=time.monotonic() - started,
                               detail={**step.detail, "error": str(exc)},
                               log="\n".join(step.lines))
            raise
        self.runs.end_step(self.run_id, position, "succeeded",
                           duration_s=time.monotonic() - started, detail=step.detail,
                           log="\n".join(step.lines))

    def heartbeat(self) -> None:
        """Refresh the run's heartbeat at most every few seconds (called while waiting)."""
        if time.monotonic() - self._beat >= _HEARTBEAT_EVERY_S:
            self._beat = time.monotonic()
            self.runs.heartbeat(self.run_id)


class Retrainer:
    """Executes runs (see the module docstring). Thread-safe: each ``execute`` uses only
    its own state; the scheduler guarantees one run per model at a time."""

    def __init__(
        self, *, registry: Registry, artifacts: ArtifactStore, datasets: DatasetStore,
        runs: RunStore, requests: RequestStore, trainer: Trainer, rollout: Rollout,
        clock: Callable[[], datetime], actor: str = "lifecycle",
        code: dict[str, str] | None = None, fence: Callable[[], object] | None = None,
    ) -> None:
        """``fence``: raises ``NotLeader`` when this replica no longer leads (the lease's
        ``check``); called before every step, so a deposed leader registers and promotes
        nothing."""
        self._registry = registry
        self._artifacts = artifacts
        self._datasets = datasets
        self._runs = runs
        self._requests = requests
        self._trainer = trainer
        self._rollout = rollout
        self._clock = clock
        self._actor = actor
        self._code = code if code is not None else code_version()
        self._fence = fence

    def execute(
        self, run_id: int, config: LifecycleConfig, *, cancel: threading.Event | None = None,
    ) -> Run:
        """Run the queued run ``run_id`` to its end and return it as finished. Never
        raises for a pipeline failure (it is recorded on the run); raises only when the
        run cannot be started or recorded (``RunNotFound``, ``StorageUnavailable``)."""
        run = self._runs.start(run_id)
        cancel = cancel or threading.Event()
        status, outcome, error = "failed", "", ""
        try:
            status, outcome, error = self._pipeline(run, config, cancel)
        except RunFailure as exc:
            error = f"{exc.step}: {exc}"
            if isinstance(exc, TrainingFailed) and exc.traceback:
                error += "\n" + exc.traceback
        except Exception as exc:  # noqa: BLE001 - a run must end recorded, whatever broke
            error = f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            log.error("run crashed", exc_info=True,
                      extra={"event": "run_crashed", "run_id": run_id, "model": run.model})
        finished = self._runs.finish(run_id, status, outcome=outcome, error=error)
        log.info("run finished", extra={"event": "run_finished", "run_id": run_id,
                                        "model": run.model, "status": status,
                                        "outcome": outcome})
        try:
            self._registry.record_event(self._actor, "run.finished", model=run.model,
                                        version=finished.candidate_version, detail={
                                            "run_id": run_id, "status": status,
                                            "outcome": outcome, "trigger": run.trigger,
                                            "reason": run.reason,
                                            "error": error.split("\n", 1)[0]})
        except LifecycleError:
            log.warning("run event not recorded", exc_info=True)
        return self._runs.get(run_id)

    def _pipeline(
        self, run: Run, config: LifecycleConfig, cancel: threading.Event,
    ) -> tuple[str, str, str]:
        steps = _Recorder(self._runs, run.id, cancel, self._fence)
        model = self._registry.get_model(run.model)
        champion = self._registry.get_aliases(model.name).get(PRODUCTION)
        with steps.step("snapshot", window_s=config.window_s,
                        seed_dataset=config.seed_dataset) as step:
            arrays, dataset = self._snapshot(run, model, champion, config, step)
            train, holdout = split_by_time(arrays, config.holdout_fraction)
            if config.task == "classification":
                missing = sorted(set(np.unique(arrays.labels).tolist())
                                 - set(np.unique(train.labels).tolist()))
                if missing:
                    raise DatasetInvalid(f"the training part (before the holdout) lacks "
                                         f"class(es) {missing}")
        spec = TrainSpec(config.estimator, dict(config.params), config.seed, config.task,
                         model.signature)
        with steps.step("train", estimator=config.estimator, params=dict(config.params),
                        seed=config.seed, n_train=len(train), n_holdout=len(holdout)) as step:
            result = self._trainer.train(spec, train.features, train.labels, holdout.features,
                                         timeout_s=config.timeout_s, cancel=cancel,
                                         on_wait=steps.heartbeat)
            step.detail.update(train_seconds=result.train_seconds,
                               wall_seconds=result.wall_seconds,
                               cpu_seconds=result.extra.get("cpu_seconds"),
                               classes=list(result.classes))
            step.lines.extend(result.log.splitlines()[-50:])
        with steps.step("convert", tolerance=config.parity_tolerance) as step:
            try:
                validate_onnx(result.onnx_bytes, model.signature)
            except InvalidArtifact as exc:
                raise ParityFailed(f"the converted model does not fit the serving "
                                   f"signature: {exc}") from exc
            diff = parity_max_abs_diff(result.onnx_bytes, holdout.features,
                                       result.holdout_scores, task=config.task,
                                       tolerance=config.parity_tolerance)
            step.detail.update(parity_max_abs_diff=diff, size_bytes=len(result.onnx_bytes))
        with steps.step("evaluate", holdout_rows=len(holdout), champion=champion) as step:
            candidate, champ, champion_error = self._evaluate(
                model.name, champion, result.onnx_bytes, holdout, config, result.classes)
            step.detail.update(candidate=candidate.flat(),
                               champion=None if champ is None else champ.flat(),
                               champion_error=champion_error)
        self._runs.update(run.id, metrics={
            **candidate.flat(), "parity_max_abs_diff": diff, "train_seconds":
            result.train_seconds, **{f"champion_{k}": v for k, v in
                                     (champ.flat() if champ else {}).items()}})
        with steps.step("gates", **config.gates.to_json()) as step:
            report = check_gates(config.gates, config.task, candidate.flat(),
                                 None if champ is None else champ.flat(),
                                 champion_version=champion, champion_error=champion_error)
            step.detail.update(report=report.to_json())
            step.log(report.summary())
        with steps.step("register", status="registered" if report.passed else "rejected") as step:
            version, created = self._register(run, model, champion, config, dataset.summary(),
                                              result.onnx_bytes, candidate, report)
            step.detail.update(version=version, created=created)
            if not created:
                step.log(f"the candidate's bytes are version {version} already")
        if not created:
            return "succeeded", "unchanged", ""
        if not report.passed:
            return "rejected", "rejected", f"gates: {report.summary()}"
        with steps.step("deploy", policy=config.deploy.policy) as step:
            deployed = self._rollout.deploy(model.name, version, champion, config.deploy,
                                            cancel=cancel, heartbeat=steps.heartbeat)
            step.detail.update(outcome=deployed.outcome, **deployed.detail)
            step.log(deployed.reason)
        if deployed.outcome == "rejected":
            return "rejected", "rejected", f"deploy: {deployed.reason}"
        return "succeeded", deployed.outcome, ""

    def _snapshot(
        self, run: Run, model: Model, champion: int | None, config: LifecycleConfig, step: _Step,
    ) -> tuple[DatasetArrays, Dataset]:
        if len(model.signature.inputs) != 1:
            raise DatasetInvalid(f"the loop trains single-input models; '{model.name}' has "
                                 f"{len(model.signature.inputs)} inputs")
        source = model.signature.inputs[0]
        until_us = int(self._clock().timestamp() * 1e6)
        since_us = until_us - int(config.window_s * 1e6)
        arrays, skipped = snapshot_from_log(
            self._requests, model.name, since_us=since_us, until_us=until_us,
            task=config.task, input_name=source.name, limit=config.max_rows)
        step.log(f"{len(arrays)} labelled rows from the request log; skipped {skipped}")
        sources = ["request_log"]
        if config.seed_dataset == "champion" and champion is not None:
            seed = self._datasets.for_version(model.name, champion)
            if seed is not None:
                seeded = self._datasets.load(seed)
                # Rows inside the window are in the fresh pull already.
                seeded = seeded.take(np.flatnonzero(seeded.timestamps_us < since_us))
                arrays = DatasetArrays.concat([seeded, arrays]) if len(seeded) else arrays
                sources.append(f"dataset:{seed.id}")
                step.log(f"{len(seeded)} rows from dataset {seed.id} (version {seed.version})")
        spec = DatasetSpec(
            n_features=int(source.shape[-1]) if source.shape and source.shape[-1] > 0 else int(
                arrays.features.shape[-1]),
            task=config.task, feature_dtype=_DTYPES.get(source.datatype, "float32"),
            allowed_labels=config.allowed_labels or (
                _labels_of(model) if config.task == "classification" else None),
            min_rows=config.min_rows,
            min_per_class=config.min_per_class)
        counts = validate(arrays, spec)
        dataset, created = self._datasets.save(
            model.name, arrays, source="+".join(sources), window=(since_us, until_us),
            run_id=run.id, label_counts=counts, metadata={"skipped": skipped})
        self._runs.update(run.id, dataset_id=dataset.id, champion_version=champion)
        step.detail.update(dataset=dataset.summary(), created=created, skipped=skipped)
        return arrays, dataset

    def _evaluate(
        self, model: str, champion: int | None, onnx_bytes: bytes, holdout: DatasetArrays,
        config: LifecycleConfig, classes: tuple[Any, ...],
    ) -> tuple[Evaluation, Evaluation | None, str]:
        candidate = evaluate(onnx_bytes, holdout.features, holdout.labels, task=config.task,
                             classes=classes)
        if champion is None:
            return candidate, None, ""
        try:
            data = self._artifacts.read(self._registry.get_version(model, champion).sha256)
            return candidate, evaluate(data, holdout.features, holdout.labels,
                                       task=config.task, classes=classes), ""
        except (LifecycleError, ValueError) as exc:
            return candidate, None, str(exc)

    def _register(
        self, run: Run, model: Model, champion: int | None, config: LifecycleConfig,
        dataset: dict[str, Any], onnx_bytes: bytes, candidate: Evaluation, report: GateReport,
    ) -> tuple[int, bool]:
        sha256, size = self._artifacts.put(onnx_bytes)
        lineage = {
            "run_id": run.id, "trigger": run.trigger, "reason": run.reason,
            "dataset": dataset, "parent_version": champion, "code_version": self._code,
            "params": {"estimator": config.estimator, "params": dict(config.params),
                       "seed": config.seed, "holdout_fraction": config.holdout_fraction,
                       "window_s": config.window_s},
        }
        status = "registered" if report.passed else "rejected"
        version, created = self._registry.register_version(
            model.name, sha256=sha256, size=size, status=status, actor=self._actor,
            description=f"retrained by run {run.id} ({run.trigger})",
            metadata={"source": f"lifecycle:run:{run.id}", "lineage": lineage,
                      "params": {"estimator": config.estimator, **dict(config.params)},
                      "metrics": candidate.flat(), "gates": report.to_json()},
            dataset_id=int(dataset["id"]))
        self._runs.update(run.id, candidate_version=version.version)
        return version.version, created


def _labels_of(model: Model) -> tuple[int, ...] | None:
    """Classes 0..k-1 when the model has a fixed-width 2-D floating output (scores)."""
    for spec in model.signature.outputs:
        if spec.datatype in _DTYPES and len(spec.shape) == 2 and spec.shape[1] > 1:
            return tuple(range(spec.shape[1]))
    return None
