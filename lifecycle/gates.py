"""Evaluation gates: the checks a candidate must pass before it may serve.

Three kinds of check, each configured independently (None switches one off):

- absolute: ``min_auc`` and any ``minimums``/``maximums`` on a metric of the candidate;
- relative to the champion (scored on the same holdout), on the primary ``metric``
  (``roc_auc`` for classification, ``rmse`` for regression unless set): *not worse by
  more than* ``max_auc_drop`` (ε) and, when set, *better by at least* ``min_improvement``
  (δ). Without a champion both pass, saying so; a champion that could not be scored
  fails them;
- budgets: ``max_latency_p99_us`` (single-row p99) and ``max_size_bytes``.

"Worse" follows the metric's direction: lower is better for ``log_loss``, ``rmse``,
``mae``, latency and size, higher for the rest. The default ε is 0: a candidate that is
worse than the champion on the primary metric never passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LOWER_IS_BETTER",
    "GateCheck",
    "GateConfig",
    "GateReport",
    "check_gates",
    "primary_metric",
]

LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae", "latency_p99_us", "size_bytes"})


def primary_metric(task: str, configured: str = "") -> str:
    """The metric relative gates compare: ``configured``, else by task."""
    if configured:
        return configured
    return "rmse" if task == "regression" else "roc_auc"


@dataclass(frozen=True)
class GateConfig:
    metric: str = ""
    min_auc: float | None = None
    max_auc_drop: float | None = 0.0
    min_improvement: float | None = None
    max_latency_p99_us: float | None = None
    max_size_bytes: int | None = None
    minimums: Mapping[str, float] = field(default_factory=dict)
    maximums: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "min_auc": self.min_auc, "max_auc_drop": self.max_auc_drop,
            "min_improvement": self.min_improvement,
            "max_latency_p99_us": self.max_latency_p99_us,
            "max_size_bytes": self.max_size_bytes, "minimums": dict(self.minimums),
            "maximums": dict(self.maximums),
        }


@dataclass(frozen=True)
class GateCheck:
    """One check: ``value`` compared with ``threshold`` (None when it did not apply)."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "value": self.value,
                "threshold": self.threshold, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateCheck:
        return cls(str(data["name"]), bool(data["passed"]), data.get("value"),
                   data.get("threshold"), str(data.get("detail", "")))


@dataclass(frozen=True)
class GateReport:
    """Every check and their verdict; stored with the version (``metadata["gates"]``)."""

    metric: str
    checks: tuple[GateCheck, ...]
    candidate: Mapping[str, float]
    champion: Mapping[str, float] | None
    champion_version: int | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        """One line: ``passed`` or the failed checks' details."""
        if self.passed:
            return "all gates passed"
        return "; ".join(c.detail for c in self.failures)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "metric": self.metric,
            "checks": [c.to_json() for c in self.checks],
            "candidate": dict(self.candidate),
            "champion": None if self.champion is None else dict(self.champion),
            "champion_version": self.champion_version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateReport:
        champion = data.get("champion")
        return cls(
            metric=str(data["metric"]),
            checks=tuple(GateCheck.from_json(c) for c in data["checks"]),
            candidate=dict(data["candidate"]),
            champion=None if champion is None else dict(champion),
            champion_version=data.get("champion_version"),
        )


def _better(metric: str, a: float, b: float) -> float:
    """How much ``a`` beats ``b`` on ``metric`` (negative when worse)."""
    return b - a if metric in LOWER_IS_BETTER else a - b


def _bound(name: str, metric: str, value: float | None, limit: float, upper: bool) -> GateCheck:
    word = "at most" if upper else "at least"
    if value is None or not math.isfinite(value):
        return GateCheck(name, False, value, limit, f"{metric} is unavailable ({word} {limit:g} "
                                                    "required)")
    ok = value <= limit if upper else value >= limit
    verdict = "within" if ok else "outside"
    return GateCheck(name, ok, value, limit,
                     f"{metric} {value:.6g} {verdict} the bound ({word} {limit:g})")


def check_gates(
    config: GateConfig,
    task: str,
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    *,
    champion_version: int | None = None,
    champion_error: str = "",
) -> GateReport:
    """Run every configured check; ``candidate``/``champion`` are flat metric maps that
    include ``latency_p99_us`` and ``size_bytes``. ``champion_error`` says why an existing
    champion could not be evaluated: relative checks then fail (closed), since nothing
    shows the candidate is not worse. Pure."""
    metric = primary_metric(task, config.metric)
    checks: list[GateCheck] = []
    minimums = dict(config.minimums)
    if config.min_auc is not None:
        minimums["roc_auc"] = config.min_auc
    for name, limit in sorted(minimums.items()):
        checks.append(_bound(f"min_{name}", name, candidate.get(name), limit, upper=False))
    for name, limit in sorted(config.maximums.items()):
        checks.append(_bound(f"max_{name}", name, candidate.get(name), limit, upper=True))
    if config.max_latency_p99_us is not None:
        checks.append(_bound("max_latency_p99_us", "latency_p99_us",
                             candidate.get("latency_p99_us"), config.max_latency_p99_us,
                             upper=True))
    if config.max_size_bytes is not None:
        checks.append(_bound("max_size_bytes", "size_bytes", candidate.get("size_bytes"),
                             float(config.max_size_bytes), upper=True))
    if champion_error and (config.max_auc_drop is not None
                           or config.min_improvement is not None):
        checks.append(GateCheck("champion_evaluation", False, None, None,
                                f"the champion could not be evaluated: {champion_error}"))
    else:
        checks.extend(_relative(config, metric, candidate, champion))
    return GateReport(metric, tuple(checks), dict(candidate),
                      None if champion is None else dict(champion), champion_version)


def _relative(
    config: GateConfig, metric: str, candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
) -> list[GateCheck]:
    wanted = [(n, v) for n, v in (("max_auc_drop", config.max_auc_drop),
                                  ("min_improvement", config.min_improvement)) if v is not None]
    if not wanted:
        return []
    mine = candidate.get(metric)
    theirs = None if champion is None else champion.get(metric)
    if mine is None or not math.isfinite(mine):
        return [GateCheck(n, False, mine, v, f"candidate {metric} is unavailable")
                for n, v in wanted]
    if theirs is None or not math.isfinite(theirs):
        return [GateCheck(n, True, mine, v, f"no champion {metric} to compare with")
                for n, v in wanted]
    gain = _better(metric, mine, theirs)
    checks = []
    for name, limit in wanted:
        if name == "max_auc_drop":
            ok = gain >= -limit
            detail = (f"{metric} {mine:.6g} vs champion {theirs:.6g}: "
                      f"{'not worse' if ok else 'worse'} than the allowed drop of {limit:g}")
        else:
            ok = gain >= limit
            detail = (f"{metric} {mine:.6g} vs champion {theirs:.6g}: improvement "
                      f"{gain:.6g} {'meets' if ok else 'is below'} the required {limit:g}")
        checks.append(GateCheck(name, ok, gain, limit, detail))
    return checks

