"""Input drift: per-feature PSI and Kolmogorov–Smirnov distance against a reference.

The reference is a ``FeatureProfile`` per feature, computed once from a dataset and
stored with it as plain JSON (so a drift check reads no arrays of the reference):

- ``edges``: the reference's distinct percentiles (0..100 in steps of 1), with ``cdf``
  the exact share of reference rows ``<= edge``. The KS distance is taken over these
  edges — exact for discrete features (flags), within about 1/100 of the sample KS for
  continuous ones, which is far below any useful threshold;
- ``psi_edges``: the distinct deciles, and ``psi_shares`` the reference's share in each
  of the ``len(psi_edges) + 1`` right-closed bins. PSI is
  ``Σ (cur − ref) · ln(cur / ref)`` with shares floored at ``PSI_FLOOR`` so an empty
  bin does not make it infinite.

Rules of thumb for PSI: < 0.1 stable, 0.1–0.25 moderate, > 0.25 large.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DRIFT_METRICS",
    "PSI_FLOOR",
    "DriftReport",
    "FeatureDrift",
    "FeatureProfile",
    "compare",
    "ks_distance",
    "profile_features",
    "psi",
]

DRIFT_METRICS = ("psi", "ks")
PSI_FLOOR = 1e-4
_PERCENTILES = np.linspace(0.0, 100.0, 101)
_DECILES = np.linspace(10.0, 90.0, 9)


@dataclass(frozen=True)
class FeatureProfile:
    """The reference distribution of one feature (see the module docstring)."""

    name: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    edges: tuple[float, ...]
    cdf: tuple[float, ...]
    psi_edges: tuple[float, ...]
    psi_shares: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "count": self.count, "mean": self.mean, "std": self.std,
            "min": self.min, "max": self.max, "edges": list(self.edges), "cdf": list(self.cdf),
            "psi_edges": list(self.psi_edges), "psi_shares": list(self.psi_shares),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureProfile:
        return cls(
            name=str(data["name"]), count=int(data["count"]), mean=float(data["mean"]),
            std=float(data["std"]), min=float(data["min"]), max=float(data["max"]),
            edges=tuple(float(v) for v in data["edges"]),
            cdf=tuple(float(v) for v in data["cdf"]),
            psi_edges=tuple(float(v) for v in data["psi_edges"]),
            psi_shares=tuple(float(v) for v in data["psi_shares"]),
        )


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each right-closed bin: (-inf, e0], (e0, e1], …, (e_last, inf)."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def _profile(name: str, column: np.ndarray) -> FeatureProfile:
    column = np.sort(column.astype(np.float64))
    edges = np.unique(np.percentile(column, _PERCENTILES))
    cdf = np.searchsorted(column, edges, side="right") / len(column)
    psi_edges = np.unique(np.percentile(column, _DECILES))
    return FeatureProfile(
        name=name, count=len(column), mean=float(column.mean()), std=float(column.std()),
        min=float(column[0]), max=float(column[-1]), edges=tuple(edges.tolist()),
        cdf=tuple(cdf.tolist()), psi_edges=tuple(psi_edges.tolist()),
        psi_shares=tuple(_shares(column, psi_edges).tolist()),
    )


def profile_features(
    X: np.ndarray, names: Sequence[str] | None = None
) -> tuple[FeatureProfile, ...]:
    """One profile per column of the 2-D array ``X`` (at least one row, finite values)."""
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"expected a non-empty 2-D array, got shape {X.shape}")
    names = list(names) if names is not None else [f"f{i}" for i in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise ValueError(f"{len(names)} names for {X.shape[1]} features")
    return tuple(_profile(name, X[:, i]) for i, name in enumerate(names))


def psi(reference: FeatureProfile, values: np.ndarray) -> float:
    """Population stability index of ``values`` against the reference bins."""
    edges = np.asarray(reference.psi_edges, dtype=np.float64)
    ref = np.maximum(np.asarray(reference.psi_shares), PSI_FLOOR)
    cur = np.maximum(_shares(values.astype(np.float64), edges), PSI_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def ks_distance(reference: FeatureProfile, values: np.ndarray) -> float:
    """Largest gap between the reference CDF and the empirical CDF of ``values``,
    over the reference's percentile edges."""
    edges = np.asarray(reference.edges, dtype=np.float64)
    ordered = np.sort(values.astype(np.float64))
    current = np.searchsorted(ordered, edges, side="right") / max(len(ordered), 1)
    return float(np.max(np.abs(current - np.asarray(reference.cdf))))


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float
    ks: float
    drifted: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "psi": self.psi, "ks": self.ks, "drifted": self.drifted}


@dataclass(frozen=True)
class DriftReport:
    """Per-feature scores; ``share`` is the fraction of features whose ``metric`` exceeds
    ``threshold``."""

    metric: str
    threshold: float
    rows: int
    features: tuple[FeatureDrift, ...]

    @property
    def share(self) -> float:
        return sum(f.drifted for f in self.features) / len(self.features) if self.features else 0.0

    @property
    def drifted(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.drifted)

    def score(self) -> float:
        """The largest per-feature score of ``metric`` (0 without features)."""
        return max((getattr(f, self.metric) for f in self.features), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "threshold": self.threshold, "rows": self.rows,
                "share": self.share, "features": [f.to_json() for f in self.features]}


def compare(
    reference: Sequence[FeatureProfile], X: np.ndarray, *, metric: str = "psi",
    threshold: float = 0.2,
) -> DriftReport:
    """Score every feature of ``X`` (2-D, columns in the reference's order)."""
    if metric not in DRIFT_METRICS:
        raise ValueError(f"drift metric must be one of {DRIFT_METRICS}, got {metric!r}")
    if X.ndim != 2 or X.shape[1] != len(reference):
        raise ValueError(f"expected {len(reference)} feature columns, got shape {X.shape}")
    scores = []
    for i, profile in enumerate(reference):
        column = X[:, i]
        column = column[np.isfinite(column)]
        p, k = psi(profile, column), ks_distance(profile, column)
        value = p if metric == "psi" else k
        scores.append(FeatureDrift(profile.name, p, k, bool(math.isfinite(value)
                                                              and value > threshold)))
    return DriftReport(metric, threshold, int(X.shape[0]), tuple(scores))
