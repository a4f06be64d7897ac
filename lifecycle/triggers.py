"""Triggers: stored per model as plain JSON, and the checks that decide when they fire.

``TriggerStore`` keeps each model's trigger list (``lifecycle.loop_config.TriggerSpec``
as JSON) in the ``triggers`` table, one row per model with a revision that grows on
every change; config only seeds a model that has no row yet, so lists changed over the
admin API survive restarts. Each change records a ``triggers.set`` event.

``TriggerChecker.check`` evaluates one condition trigger now (time-based ones — interval,
cron — fire from the scheduler's clock and need no check):

- ``new_labels``: primary requests with a label, logged since the model's last run was
  created (all of them before the first run). A request logged before that run whose
  label came later is not counted again;
- ``drift``: the champion's reference is the dataset linked to its version (its training
  snapshot). **Fallback** when it has none (a version registered before the loop, or
  uploaded by hand): the first ``reference_rows`` requests the champion served — early
  traffic, assumed to look like what it was trained for. Fewer than ``min_rows`` reference
  or recent rows → no decision. ``register_bootstrap_dataset`` gives the version the
  gateway bootstrapped its real training data instead, so call it once at start;
- ``quality_drop``: the champion's labelled primary requests of the window, scored from
  the logged outputs (``accuracy`` of the predicted class, or ``roc_auc`` of the scores);
- every condition trigger stays quiet for ``cooldown_s`` after the model's last run was
  created, and while the model has no production version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from sqlalchemy import insert, select, update

from lifecycle.datasets import Dataset, DatasetArrays, DatasetStore, recent_inputs
from lifecycle.db import Database, EventRow, ModelRow, trigger_table
from lifecycle.domain import PRODUCTION
from lifecycle.drift import compare, profile_features
from lifecycle.errors import InvalidArgument, ModelNotFound
from lifecycle.loop_config import TriggerSpec
from lifecycle.registry import Registry
from lifecycle.request_export import training_set_from
from lifecycle.request_store import RequestStore
from lifecycle.runs import RunStore

__all__ = [
    "TriggerChecker",
    "TriggerDecision",
    "TriggerSet",
    "TriggerStore",
    "register_bootstrap_dataset",
]

_T = trigger_table.c


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _us(moment: datetime) -> int:
    return int(moment.timestamp() * 1e6)


@dataclass(frozen=True)
class TriggerSet:
    model: str
    specs: tuple[TriggerSpec, ...]
    revision: int
    updated_at: datetime
    actor: str


class TriggerStore:
    """Repository of trigger lists; one transaction per method, thread-safe."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._db = db
        self._clock = clock

    def get(self, model: str) -> TriggerSet | None:
        """The model's triggers, or None when they were never set or seeded."""
        with self._db.read() as s:
            row = s.execute(select(trigger_table).where(_T.model == model)).mappings().first()
            return None if row is None else _set(row)

    def list(self) -> list[TriggerSet]:
        """Every model's triggers (what the scheduler polls; compare revisions)."""
        with self._db.read() as s:
            rows = s.execute(select(trigger_table).order_by(_T.model)).mappings()
            return [_set(r) for r in rows]

    def set(self, model: str, specs: Sequence[TriggerSpec], *, actor: str) -> TriggerSet:
        """Replace the model's trigger list (an empty list disables them all)."""
        return self._write(model, specs, actor, only_if_new=False) or self._required(model)

    def seed(self, model: str, specs: Sequence[TriggerSpec], *, actor: str = "config") -> bool:
        """Store ``specs`` unless the model's triggers were ever set; True when stored."""
        return self._write(model, specs, actor, only_if_new=True) is not None

    def _required(self, model: str) -> TriggerSet:
        found = self.get(model)
        if found is None:
            raise ModelNotFound(model)
        return found

    def _write(
        self, model: str, specs: Sequence[TriggerSpec], actor: str, *, only_if_new: bool,
    ) -> TriggerSet | None:
        if not actor:
            raise InvalidArgument("actor must not be empty")
        body = [spec.to_json() for spec in specs]
        now = self._clock()
        with self._db.write() as s:
            if s.get(ModelRow, model) is None:
                raise ModelNotFound(model)
            row = s.execute(select(trigger_table).where(_T.model == model)).mappings().first()
            if row is not None and only_if_new:
                return None
            values = {"specs": body, "updated_at": now, "actor": actor}
            if row is None:
                s.execute(insert(trigger_table).values(model=model, revision=1, **values))
            else:
                s.execute(update(trigger_table).where(_T.model == model).values(
                    revision=_T.revision + 1, **values))
            s.add(EventRow(time=now, actor=actor, action="triggers.set", model=model,
                           version=None, detail={"before": None if row is None
                                                 else row["specs"], "after": body}))
            s.flush()
            return _set(s.execute(select(trigger_table).where(_T.model == model))
                        .mappings().one())


def _set(row: Any) -> TriggerSet:
    specs = tuple(TriggerSpec.from_json(spec, f"triggers.{i}")
                  for i, spec in enumerate(row["specs"]))
    return TriggerSet(row["model"], specs, int(row["revision"]), row["updated_at"], row["actor"])


@dataclass(frozen=True)
class TriggerDecision:
    """Whether a trigger fires now; ``reason`` is recorded on the run it starts."""

    fire: bool
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


class TriggerChecker:
    """Evaluates condition triggers against the request log; see the module docstring.
    Blocking (database reads); call it from the scheduler's threads."""

    def __init__(
        self, *, registry: Registry, requests: RequestStore, runs: RunStore,
        datasets: DatasetStore, clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._registry = registry
        self._requests = requests
        self._runs = runs
        self._datasets = datasets
        self._clock = clock

    def check(self, model: str, spec: TriggerSpec) -> TriggerDecision:
        now = self._clock()
        last = self._runs.last(model)
        if last is not None and (now - last.created_at).total_seconds() < spec.cooldown_s:
            return TriggerDecision(False, f"cooling down after run {last.id}")
        champion = self._registry.get_aliases(model).get(PRODUCTION)
        if champion is None:
            return TriggerDecision(False, "no production version")
        if spec.kind == "new_labels":
            return self._new_labels(model, spec, None if last is None else last.created_at)
        if spec.kind == "drift":
            return self._drift(model, spec, champion, now)
        if spec.kind == "quality_drop":
            return self._quality(model, spec, champion, now)
        return TriggerDecision(False, f"{spec.kind} triggers are not checked")

    def _new_labels(
        self, model: str, spec: TriggerSpec, since: datetime | None,
    ) -> TriggerDecision:
        count = self._requests.count(model, since=None if since is None else _us(since),
                                     has_feedback=True, include_shadow=False)
        where = "since the last run" if since is not None else "so far"
        detail = {"labelled": count, "min_labels": spec.min_labels}
        if count < spec.min_labels:
            return TriggerDecision(False, f"{count}/{spec.min_labels} new labels", detail)
        return TriggerDecision(True, f"new_labels: {count} labelled requests {where} "
                                     f"(>= {spec.min_labels})", detail)

    def _drift(
        self, model: str, spec: TriggerSpec, champion: int, now: datetime,
    ) -> TriggerDecision:
        dataset = self._datasets.for_version(model, champion)
        if dataset is not None and dataset.profiles:
            profiles = dataset.profiles
            against = f"training dataset {dataset.id} of version {champion}"
        else:
            early = recent_inputs(self._requests, model, version=champion,
                                  limit=spec.reference_rows)
            if len(early) < spec.min_rows:
                return TriggerDecision(False, f"no reference: version {champion} has no "
                                              f"dataset and {len(early)} early requests")
            profiles = profile_features(early)
            against = f"the first {len(early)} requests of version {champion} (fallback)"
        recent = recent_inputs(self._requests, model, since_us=_us(now) - int(
            spec.window_s * 1e6), until_us=_us(now) + 1)
        if len(recent) < spec.min_rows:
            return TriggerDecision(False, f"{len(recent)}/{spec.min_rows} recent requests")
        if recent.shape[1] != len(profiles):
            return TriggerDecision(False, f"recent inputs have {recent.shape[1]} features, "
                                          f"the reference {len(profiles)}")
        report = compare(profiles, recent, metric=spec.metric,
                         threshold=float(spec.threshold or 0.0))
        detail = {"report": report.to_json(), "against": against}
        summary = (f"{spec.metric} > {spec.threshold:g} on {report.share:.0%} of features "
                   f"({len(report.drifted)}/{len(report.features)}, max "
                   f"{report.score():.3f}) over {report.rows} requests vs {against}")
        return TriggerDecision(report.share >= spec.share, f"drift: {summary}", detail)

    def _quality(
        self, model: str, spec: TriggerSpec, champion: int, now: datetime,
    ) -> TriggerDecision:
        records = self._requests.query_requests(
            model, version=champion, since=_us(now) - int(spec.window_s * 1e6),
            until=_us(now) + 1, has_feedback=True, include_shadow=False)
        found = training_set_from(model, records, output_name=spec.output or None)
        if len(found) < spec.min_labels:
            return TriggerDecision(False, f"{len(found)}/{spec.min_labels} labels in window")
        value = _live_metric(spec.metric, found.predictions, found.labels)
        if value is None:
            return TriggerDecision(False, f"{spec.metric} cannot be computed from output "
                                          f"'{found.output_name}'")
        detail = {"metric": spec.metric, "value": value, "labels": len(found),
                  "version": champion}
        threshold = float(spec.threshold or 0.0)
        summary = (f"live {spec.metric} of version {champion} is {value:.4f} over "
                   f"{len(found)} labels (threshold {threshold:g})")
        return TriggerDecision(value < threshold, f"quality_drop: {summary}", detail)


def _live_metric(metric: str, predictions: np.ndarray, labels: np.ndarray) -> float | None:
    scores = predictions.reshape(len(predictions), -1)
    y = labels.reshape(-1)
    floating = scores.dtype.kind == "f" and scores.shape[1] > 1
    if metric == "roc_auc":
        if not floating or scores.shape[1] != 2 or len(np.unique(y)) < 2:
            return None
        return float(roc_auc_score(y, scores[:, 1]))
    predicted = scores.argmax(axis=1) if floating else scores[:, 0]
    return float(np.mean(predicted.astype(np.float64) == y.astype(np.float64)))


# --------------------------------------------------------------- bootstrap reference


def _synthetic_fraud(metadata: Mapping[str, Any]) -> tuple[DatasetArrays, str, list[str]]:
    from lifecycle.bootstrap import train_fraud_demo
    from lifecycle.synthetic import FEATURE_NAMES

    demo = train_fraud_demo(seed=int(metadata.get("seed", 0)))
    arrays = DatasetArrays(np.array(demo.X_train), np.array(demo.y_train),
                           np.zeros(len(demo.y_train), dtype=np.int64))
    return arrays, hashlib.sha256(demo.onnx_bytes).hexdigest(), list(FEATURE_NAMES)


Regenerator = Callable[[Mapping[str, Any]], tuple[DatasetArrays, str, list[str]]]
BOOTSTRAP_SOURCES: Mapping[str, Regenerator] = {"bootstrap:synthetic_fraud": _synthetic_fraud}


def register_bootstrap_dataset(
    registry: Registry, datasets: DatasetStore, model: str, *, version: int | None = None,
    sources: Mapping[str, Regenerator] = BOOTSTRAP_SOURCES,
) -> Dataset | None:
    """Give a bootstrapped version (default: production) its training data as a dataset.

    Applies to a version whose metadata names a known bootstrap ``source`` and
    ``params.estimator`` and that has no dataset linked yet: its training rows are
    regenerated (the bootstrap trainers are deterministic), stored, and linked to it;
    ``metadata["verified"]`` says whether retraining reproduced the version's exact bytes.
    Returns the dataset, or None when there was nothing to do. Idempotent; call it once
    at start (it takes about a second for the demo model).
    """
    if version is None:
        version = registry.get_aliases(model).get(PRODUCTION)
        if version is None:
            return None
    if datasets.for_version(model, version) is not None:
        return None
    found = registry.get_version(model, version)
    regenerate = sources.get(str(found.metadata.get("source", "")))
    params = found.metadata.get("params")
    if regenerate is None or not isinstance(params, dict) or "estimator" not in params:
        return None
    arrays, sha256, names = regenerate(found.metadata)
    dataset, _ = datasets.save(model, arrays, source=str(found.metadata["source"]),
                               feature_names=names, metadata={
                                   "version": version, "verified": sha256 == found.sha256})
    datasets.link(model, version, dataset.id)
    return dataset
