"""The lifecycle loop's configuration: plain frozen data, parsed from plain dicts.

``LifecycleConfig.from_dict`` takes a model's ``[models.NAME.lifecycle]`` table as the
TOML reader returns it; ``TriggerSpec.from_json`` takes one trigger as stored in the
``triggers`` table (or listed in that config table's ``triggers``). Every invalid value
raises ``LifecycleConfigError`` whose ``key`` is its dotted path (``gates.min_auc``,
``triggers.1.threshold``). ``to_json`` of each is the inverse of its parser.

Trigger kinds (extra keys are refused):

=============  ==========================================================================
``interval``   ``seconds``: retrain every so often (counted from the last such run)
``cron``       ``cron``: a crontab expression in UTC (``"0 3 * * *"``)
``new_labels`` ``min_labels``: fire once that many labelled requests arrived since the
               model's last run started
``drift``      ``metric`` (``psi``/``ks``), ``threshold``, ``share``: fire when at least
               ``share`` of the features score above ``threshold`` over the last
               ``window_s`` of traffic (at least ``min_rows``), against the champion's
               training dataset — or, when it has none, the first ``reference_rows``
               requests it served
``quality_drop`` ``metric`` (``accuracy``/``roc_auc``), ``threshold``: fire when the
               champion's live metric over ``window_s`` (at least ``min_labels`` labels)
               falls below ``threshold``; ``output`` names the output to score
``manual``     never fires by itself (documents that ``gateway retrain`` is expected)
=============  ==========================================================================

Condition triggers (``new_labels``, ``drift``, ``quality_drop``) are checked every
``check_every_s`` and stay quiet for ``cooldown_s`` after any run of the model started.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lifecycle.errors import InvalidArgument
from lifecycle.gates import GateConfig
from lifecycle.loop_errors import LifecycleConfigError
from lifecycle.traffic import CanaryGuards, CanarySpec

__all__ = [
    "CONDITION_TRIGGERS",
    "DEPLOY_POLICIES",
    "TASKS",
    "TRIGGER_KINDS",
    "DeployConfig",
    "LifecycleConfig",
    "TriggerSpec",
]

TASKS = ("classification", "regression")
DEPLOY_POLICIES = ("manual", "direct", "shadow", "canary")
TRIGGER_KINDS = ("interval", "cron", "new_labels", "drift", "quality_drop", "manual")
CONDITION_TRIGGERS = ("new_labels", "drift", "quality_drop")
_TRIGGER_KEYS: dict[str, tuple[str, ...]] = {
    "interval": ("seconds",),
    "cron": ("cron",),
    "new_labels": ("min_labels", "check_every_s", "cooldown_s"),
    "drift": ("metric", "threshold", "share", "window_s", "min_rows", "reference_rows",
              "check_every_s", "cooldown_s"),
    "quality_drop": ("metric", "threshold", "window_s", "min_labels", "output",
                     "check_every_s", "cooldown_s"),
    "manual": (),
}


class _Reader:
    """Typed access to one table of plain data; errors name the dotted key."""

    def __init__(self, data: Any, prefix: str) -> None:
        if not isinstance(data, Mapping):
            raise LifecycleConfigError(prefix or "lifecycle", f"expected a table, got {data!r}")
        self.data = data
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def refuse_unknown(self, allowed: set[str] | tuple[str, ...]) -> None:
        unknown = sorted(set(self.data) - set(allowed))
        if unknown:
            raise LifecycleConfigError(self.key(unknown[0]), "unknown key (expected one of "
                                       f"{', '.join(sorted(allowed))})")

    def number(self, name: str, default: Any, *, low: float | None = None,
               high: float | None = None, strict_low: bool = False) -> Any:
        value = self.data.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise LifecycleConfigError(self.key(name), f"expected a finite number, got {value!r}")
        if low is not None and (value <= low if strict_low else value < low):
            raise LifecycleConfigError(self.key(name), f"must be {'>' if strict_low else '>='} "
                                       f"{low:g}, got {value!r}")
        if high is not None and value > high:
            raise LifecycleConfigError(self.key(name), f"must be <= {high:g}, got {value!r}")
        return float(value)

    def integer(self, name: str, default: Any, *, low: int = 0) -> Any:
        value = self.data.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LifecycleConfigError(self.key(name), f"expected an integer >= {low}, got "
                                       f"{value!r}")
        return value

    def string(self, name: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str):
            raise LifecycleConfigError(self.key(name), f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise LifecycleConfigError(self.key(name), f"expected one of {', '.join(choices)}, "
                                       f"got {value!r}")
        return value

    def table(self, name: str) -> _Reader:
        return _Reader(self.data.get(name, {}), self.key(name))


@dataclass(frozen=True)
class TriggerSpec:
    """One trigger; see the module docstring for the keys each kind uses."""

    kind: str
    seconds: float | None = None
    cron: str = ""
    min_labels: int = 100
    metric: str = ""
    threshold: float | None = None
    share: float = 0.3
    window_s: float = 3600.0
    min_rows: int = 200
    reference_rows: int = 1000
    output: str = ""
    check_every_s: float = 30.0
    cooldown_s: float = 600.0

    def to_json(self) -> dict[str, Any]:
        """Only the keys of this kind (what ``from_json`` reads back)."""
        return {"kind": self.kind, **{k: getattr(self, k) for k in _TRIGGER_KEYS[self.kind]}}

    def describe(self) -> str:
        """A short human description, used in run reasons."""
        if self.kind == "interval":
            return f"interval every {self.seconds:g} s"
        if self.kind == "cron":
            return f"cron '{self.cron}'"
        if self.kind == "new_labels":
            return f"new_labels >= {self.min_labels}"
        if self.kind == "drift":
            return f"drift {self.metric} > {self.threshold:g} on >= {self.share:.0%} of features"
        if self.kind == "quality_drop":
            return f"quality_drop {self.metric} < {self.threshold:g}"
        return self.kind

    @classmethod
    def from_json(cls, data: Any, prefix: str = "trigger") -> TriggerSpec:
        r = _Reader(data, prefix)
        kind = r.string("kind", "", TRIGGER_KINDS)
        r.refuse_unknown(("kind", *_TRIGGER_KEYS[kind]))
        values: dict[str, Any] = {"kind": kind}
        if kind == "interval":
            values["seconds"] = r.number("seconds", None, low=0, strict_low=True)
            if values["seconds"] is None:
                raise LifecycleConfigError(r.key("seconds"), "required for an interval trigger")
        elif kind == "cron":
            values["cron"] = _crontab(r)
        if kind in CONDITION_TRIGGERS:
            values["check_every_s"] = r.number("check_every_s", 30.0, low=0, strict_low=True)
            values["cooldown_s"] = r.number("cooldown_s", 600.0, low=0)
        if kind in ("new_labels", "quality_drop"):
            values["min_labels"] = r.integer("min_labels", 100, low=1)
        if kind in ("drift", "quality_drop"):
            values["window_s"] = r.number("window_s", 3600.0, low=0, strict_low=True)
        if kind == "drift":
            values["metric"] = r.string("metric", "psi", ("psi", "ks"))
            values["threshold"] = r.number("threshold", 0.2 if values["metric"] == "psi"
                                           else 0.1, low=0, strict_low=True)
            values["share"] = r.number("share", 0.3, low=0, high=1, strict_low=True)
            values["min_rows"] = r.integer("min_rows", 200, low=1)
            values["reference_rows"] = r.integer("reference_rows", 1000, low=1)
        if kind == "quality_drop":
            values["metric"] = r.string("metric", "accuracy", ("accuracy", "roc_auc"))
            values["threshold"] = r.number("threshold", None, low=0, high=1)
            if values["threshold"] is None:
                raise LifecycleConfigError(r.key("threshold"), "required for quality_drop")
            values["output"] = r.string("output", "")
        return cls(**values)


def _crontab(r: _Reader) -> str:
    expression = r.string("cron", "")
    # Imported here: APScheduler is only needed where cron triggers are used.
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as err:
        raise LifecycleConfigError(r.key("cron"), f"not a crontab expression: {err}") from err
    return expression


@dataclass(frozen=True)
class DeployConfig:
    """How a version that passed its gates reaches production (``policy``):
    ``manual`` stops after registering; ``direct`` promotes at once; ``shadow`` mirrors
    ``shadow_fraction`` of traffic to it until ``shadow_min_requests`` were compared and
    promotes when their agreement is >= ``min_agreement`` (else rejects; gives up after
    ``shadow_timeout_s``); ``canary`` starts the canary controller's ramp (``steps``,
    ``min_requests``, ``min_seconds``, ``guards``), which promotes or aborts by itself."""

    policy: str = "manual"
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    min_requests: int = 100
    min_seconds: float = 60.0
    guards: Mapping[str, Any] = field(default_factory=dict)
    shadow_fraction: float = 1.0
    shadow_min_requests: int = 200
    min_agreement: float = 0.95
    shadow_timeout_s: float = 600.0

    def canary_spec(self, version: int) -> CanarySpec:
        return CanarySpec(version, steps=self.steps, min_requests=self.min_requests,
                          min_seconds=self.min_seconds, guards=CanaryGuards(**self.guards))

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["steps"], out["guards"] = list(self.steps), dict(self.guards)
        return out

    @classmethod
    def from_json(cls, data: Any, prefix: str = "deploy") -> DeployConfig:
        if isinstance(data, str):
            data = {"policy": data}
        r = _Reader(data, prefix)
        r.refuse_unknown({f.name for f in fields(cls)})
        steps = data.get("steps", cls.steps)
        if not isinstance(steps, list | tuple) or not all(
                isinstance(s, int | float) and not isinstance(s, bool) for s in steps):
            raise LifecycleConfigError(r.key("steps"), f"expected a list of percentages, got "
                                       f"{steps!r}")
        config = cls(
            policy=r.string("policy", "manual", DEPLOY_POLICIES),
            steps=tuple(float(s) for s in steps),
            min_requests=r.integer("min_requests", 100),
            min_seconds=r.number("min_seconds", 60.0, low=0),
            guards=dict(r.table("guards").data),
            shadow_fraction=r.number("shadow_fraction", 1.0, low=0, high=1, strict_low=True),
            shadow_min_requests=r.integer("shadow_min_requests", 200, low=1),
            min_agreement=r.number("min_agreement", 0.95, low=0, high=1),
            shadow_timeout_s=r.number("shadow_timeout_s", 600.0, low=0, strict_low=True),
        )
        try:
            config.canary_spec(1)
        except InvalidArgument as err:
            raise LifecycleConfigError(r.key("steps"), str(err)) from err
        except TypeError as err:
            raise LifecycleConfigError(r.key("guards"), str(err)) from err
        return config


@dataclass(frozen=True)
class LifecycleConfig:
    """How one model retrains: the estimator (a dotted class path and its params,
    seeded), the data (labelled traffic of the last ``window_s``, at most ``max_rows``
    rows, plus the champion's dataset when ``seed_dataset == "champion"``), its
    validation, the split (newest ``holdout_fraction`` held out), the parity tolerance,
    the gates, the deploy policy, the run ``timeout_s`` and the triggers."""

    estimator: str = "sklearn.linear_model.LogisticRegression"
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    task: str = "classification"
    holdout_fraction: float = 0.2
    window_s: float = 86400.0
    max_rows: int | None = None
    seed_dataset: str = ""
    min_rows: int = 200
    min_per_class: int = 20
    allowed_labels: tuple[int, ...] | None = None
    parity_tolerance: float = 1e-4
    gates: GateConfig = field(default_factory=GateConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    timeout_s: float = 600.0
    triggers: tuple[TriggerSpec, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator, "params": dict(self.params), "seed": self.seed,
            "task": self.task, "holdout_fraction": self.holdout_fraction,
            "window_s": self.window_s, "max_rows": self.max_rows,
            "seed_dataset": self.seed_dataset, "min_rows": self.min_rows,
            "min_per_class": self.min_per_class,
            "allowed_labels": None if self.allowed_labels is None else list(
                self.allowed_labels),
            "parity_tolerance": self.parity_tolerance, "gates": self.gates.to_json(),
            "deploy": self.deploy.to_json(), "timeout_s": self.timeout_s,
            "triggers": [t.to_json() for t in self.triggers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LifecycleConfig:
        r = _Reader(data, "")
        r.refuse_unknown({f.name for f in fields(cls)})
        estimator = r.string("estimator", cls.estimator)
        module, _, name = estimator.rpartition(".")
        if not module or not name:
            raise LifecycleConfigError("estimator", f"expected a dotted class path, got "
                                       f"{estimator!r}")
        labels = data.get("allowed_labels")
        if labels is not None and (not isinstance(labels, list | tuple) or not labels or any(
                isinstance(v, bool) or not isinstance(v, int) for v in labels)):
            raise LifecycleConfigError("allowed_labels", f"expected a list of integers, got "
                                       f"{labels!r}")
        triggers = data.get("triggers", [])
        if not isinstance(triggers, list | tuple):
            raise LifecycleConfigError("triggers", f"expected a list, got {triggers!r}")
        seed_dataset = r.string("seed_dataset", "")
        if seed_dataset not in ("", "champion"):
            raise LifecycleConfigError("seed_dataset", f"expected '' or 'champion', got "
                                       f"{seed_dataset!r}")
        return cls(
            estimator=estimator,
            params=dict(r.table("params").data),
            seed=r.integer("seed", 0),
            task=r.string("task", "classification", TASKS),
            holdout_fraction=r.number("holdout_fraction", 0.2, low=0, high=0.9,
                                      strict_low=True),
            window_s=r.number("window_s", 86400.0, low=0, strict_low=True),
            max_rows=r.integer("max_rows", None, low=1),
            seed_dataset=seed_dataset,
            min_rows=r.integer("min_rows", 200, low=2),
            min_per_class=r.integer("min_per_class", 20, low=1),
            allowed_labels=None if labels is None else tuple(labels),
            parity_tolerance=r.number("parity_tolerance", 1e-4, low=0),
            gates=_gates(r.table("gates")),
            deploy=DeployConfig.from_json(data.get("deploy", {}), "deploy"),
            timeout_s=r.number("timeout_s", 600.0, low=0, strict_low=True),
            triggers=tuple(TriggerSpec.from_json(t, f"triggers.{i}")
                           for i, t in enumerate(triggers)),
        )


def _gates(r: _Reader) -> GateConfig:
    r.refuse_unknown({f.name for f in fields(GateConfig)})
    size = r.integer("max_size_bytes", None, low=1)
    tables = {}
    for name in ("minimums", "maximums"):
        t = r.table(name)
        tables[name] = {str(k): t.number(str(k), None) for k in t.data}
    return GateConfig(
        metric=r.string("metric", ""),
        min_auc=r.number("min_auc", None, low=0, high=1),
        max_auc_drop=r.number("max_auc_drop", 0.0, low=0),
        min_improvement=r.number("min_improvement", None, low=0),
        max_latency_p99_us=r.number("max_latency_p99_us", None, low=0, strict_low=True),
        max_size_bytes=size,
        minimums=tables["minimums"],
        maximums=tables["maximums"],
    )
