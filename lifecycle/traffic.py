"""Traffic policies: which versions of a model answer its requests, and in what share.

Frozen, JSON-serialisable domain objects shared by the policy store (which persists them),
the canary controller (which ramps them) and the gateway's router (which compiles them into
a routing table). No SQLAlchemy and no ``gateway`` import here.

A ``Policy`` has a ``kind``:

- ``split``: fixed weights across versions (A/B/n);
- ``canary``: two arms, the candidate (arm ``canary``) first and the champion (arm
  ``champion``, the production version when the ramp started); the canary controller
  rewrites the weights at each step and keeps the experiment id, so sticky keys already on
  the candidate stay there as its share grows;
- ``bandit``: Thompson sampling over ``bandit.versions``; the arm weights stored here are
  only the starting point, the router recomputes them from the reward counts.

Every policy may be ``sticky`` (a routing key hashes to the same arm while the experiment
id is unchanged) and may mirror a fraction of traffic to ``shadows``. A policy change gets
a new ``experiment_id`` (use the constructors), which also reshuffles sticky keys.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

from lifecycle.errors import InvalidArgument

__all__ = [
    "CANARY_STATUSES",
    "POLICY_KINDS",
    "Arm",
    "BanditSpec",
    "CanaryGuards",
    "CanarySpec",
    "CanaryState",
    "Policy",
    "RewardCounts",
    "RewardRule",
    "Shadow",
    "new_experiment_id",
]

POLICY_KINDS = ("split", "canary", "bandit")
CANARY_STATUSES = ("running", "promoting", "promoted", "aborted", "ended")
"""``running`` → ``promoting`` → ``promoted``; or ``aborted`` (a guard failed, or the
promotion did); or ``ended`` (an operator replaced or cleared the policy, or a promotion
or rollback ended the experiment)."""
ACTIVE_CANARY = ("running", "promoting")

CANARY_ARM = "canary"
CHAMPION_ARM = "champion"
# A blake2b key is at most 64 bytes: experiment ids key the sticky hash.
_EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def new_experiment_id() -> str:
    """A fresh experiment id (32 hex digits)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Arm:
    """One primary arm: ``weight`` is relative (normalised over the policy's arms)."""

    version: int
    weight: float
    name: str = ""

    def __post_init__(self) -> None:
        _check_version(self.version, "arm version")
        if not _finite(self.weight) or self.weight < 0:
            raise InvalidArgument(
                f"weight of version {self.version} must be a finite number >= 0, "
                f"got {self.weight!r}"
            )
        if not self.name:
            object.__setattr__(self, "name", str(self.version))
        elif not _ARM_NAME.fullmatch(self.name):
            raise InvalidArgument(f"arm name must match {_ARM_NAME.pattern}, got {self.name!r}")


@dataclass(frozen=True)
class Shadow:
    """Mirror ``fraction`` (0 < f <= 1) of the primary traffic to ``version``."""

    version: int
    fraction: float

    def __post_init__(self) -> None:
        _check_version(self.version, "shadow version")
        if not _finite(self.fraction) or not 0 < self.fraction <= 1:
            raise InvalidArgument(
                f"shadow fraction of version {self.version} must be within (0, 1], "
                f"got {self.fraction!r}"
            )


@dataclass(frozen=True)
class CanaryGuards:
    """When a canary step fails, compared with the champion over the same step window.

    Error rate: candidate − champion > ``max_error_rate_delta`` fails. Latency: candidate
    p99 > champion p99 × ``max_p99_ratio`` + ``p99_slack_ms`` fails (the slack keeps
    sub-millisecond noise from failing fast models). Live quality (higher is better), once
    both arms have ``min_labels`` labelled requests: champion − candidate >
    ``max_quality_drop`` fails.
    """

    max_error_rate_delta: float = 0.02
    max_p99_ratio: float = 1.5
    p99_slack_ms: float = 1.0
    max_quality_drop: float = 0.02
    min_labels: int = 50

    def __post_init__(self) -> None:
        for name in ("max_error_rate_delta", "max_p99_ratio", "p99_slack_ms", "max_quality_drop"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise InvalidArgument(f"canary guard {name} must be >= 0, got {value!r}")
        if self.max_p99_ratio < 1:
            raise InvalidArgument(f"max_p99_ratio must be >= 1, got {self.max_p99_ratio!r}")
        _check_count(self.min_labels, "min_labels")


@dataclass(frozen=True)
class CanarySpec:
    """A ramp of ``version``: candidate shares in percent, strictly increasing, the first
    below 100. Each step holds for ``min_requests`` candidate requests AND ``min_seconds``
    while the guards hold; passing the last step (or reaching 100) promotes."""

    version: int
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    min_requests: int = 100
    min_seconds: float = 60.0
    guards: CanaryGuards = field(default_factory=CanaryGuards)

    def __post_init__(self) -> None:
        _check_version(self.version, "canary version")
        steps = tuple(float(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps or not all(_finite(s) and 0 < s <= 100 for s in steps):
            raise InvalidArgument(f"canary steps must be percentages in (0, 100], got {steps}")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[0] >= 100:
            raise InvalidArgument(
                f"canary steps must increase strictly and start below 100, got {steps}"
            )
        _check_count(self.min_requests, "min_requests")
        if not _finite(self.min_seconds) or self.min_seconds < 0:
            raise InvalidArgument(f"min_seconds must be >= 0, got {self.min_seconds!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "steps": list(self.steps),
            "min_requests": self.min_requests, "min_seconds": self.min_seconds,
            "guards": dict(vars(self.guards)),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CanarySpec:
        return cls(
            version=int(data["version"]), steps=tuple(data["steps"]),
            min_requests=int(data["min_requests"]), min_seconds=float(data["min_seconds"]),
            guards=CanaryGuards(**data.get("guards", {})),
        )


@dataclass(frozen=True)
class RewardRule:
    """How feedback becomes a binary bandit reward.

    ``match``: 1 when the label equals the predicted class, read from output ``output``
    (the first output when empty): the argmax of the first row of a score matrix, or the
    first element of a label tensor. ``threshold``: 1 when the label is >= ``threshold``.
    """

    kind: str = "match"
    threshold: float = 0.5
    output: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("match", "threshold"):
            raise InvalidArgument(f"reward kind must be match or threshold, got {self.kind!r}")
        if not _finite(self.threshold):
            raise InvalidArgument(f"reward threshold must be finite, got {self.threshold!r}")

    def reward(self, label: float, outputs: Mapping[str, np.ndarray] | None = None) -> bool | None:
        """The reward of one labelled request, or None when the outputs cannot tell."""
        if self.kind == "threshold":
            return float(label) >= self.threshold
        if not outputs:
            return None
        array = outputs.get(self.output) if self.output else next(iter(outputs.values()))
        if array is None or array.size == 0:
            return None
        if array.ndim >= 2 and array.shape[-1] > 1 and np.issubdtype(array.dtype, np.floating):
            predicted = float(np.argmax(array.reshape(-1, array.shape[-1])[0]))
        else:
            predicted = float(array.reshape(-1)[0])
        return predicted == float(label)


@dataclass(frozen=True)
class BanditSpec:
    """Thompson sampling over ``versions``; each arm keeps at least ``floor``/N of traffic."""

    versions: tuple[int, ...]
    floor: float = 0.1
    reward: RewardRule = field(default_factory=RewardRule)

    def __post_init__(self) -> None:
        versions = tuple(self.versions)
        object.__setattr__(self, "versions", versions)
        for v in versions:
            _check_version(v, "bandit version")
        if len(versions) < 2 or len(set(versions)) != len(versions):
            raise InvalidArgument(f"a bandit needs two or more distinct versions, got {versions}")
        if not _finite(self.floor) or not 0 <= self.floor <= 1:
            raise InvalidArgument(f"exploration floor must be within [0, 1], got {self.floor!r}")

    def to_json(self) -> dict[str, Any]:
        return {"versions": list(self.versions), "floor": self.floor,
                "reward": dict(vars(self.reward))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BanditSpec:
        return cls(tuple(int(v) for v in data["versions"]), float(data["floor"]),
                   RewardRule(**data.get("reward", {})))


@dataclass(frozen=True)
class Policy:
    """A model's traffic policy; see the module docstring. Raises ``InvalidArgument``."""

    experiment_id: str
    kind: str
    arms: tuple[Arm, ...]
    sticky: bool = False
    shadows: tuple[Shadow, ...] = ()
    canary: CanarySpec | None = None
    bandit: BanditSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "shadows", tuple(self.shadows))
        if not isinstance(self.experiment_id, str) or not _EXPERIMENT_ID.fullmatch(
            self.experiment_id
        ):
            raise InvalidArgument(
                f"experiment id must match {_EXPERIMENT_ID.pattern}, got {self.experiment_id!r}"
            )
        if self.kind not in POLICY_KINDS:
            raise InvalidArgument(f"policy kind must be one of {POLICY_KINDS}, got {self.kind!r}")
        versions = [a.version for a in self.arms]
        if not versions or len(set(versions)) != len(versions):
            raise InvalidArgument(f"a policy needs distinct arm versions, got {versions}")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"arm names must be distinct, got {names}")
        if sum(a.weight for a in self.arms) <= 0:
            raise InvalidArgument("at least one arm needs a positive weight")
        shadowed = [s.version for s in self.shadows]
        if len(set(shadowed)) != len(shadowed):
            raise InvalidArgument(f"each version may be shadowed once, got {shadowed}")
        primary = {a.version for a in self.arms if a.weight > 0}
        if primary & set(shadowed):
            raise InvalidArgument(
                f"version(s) {sorted(primary & set(shadowed))} cannot be both a weighted arm "
                "and a shadow"
            )
        self._check_kind(versions)

    def _check_kind(self, versions: list[int]) -> None:
        if (self.kind == "canary") != (self.canary is not None):
            raise InvalidArgument("a canary spec goes with kind 'canary', and only with it")
        if (self.kind == "bandit") != (self.bandit is not None):
            raise InvalidArgument("a bandit spec goes with kind 'bandit', and only with it")
        if self.canary is not None and (
            len(self.arms) != 2 or self.arms[0].name != CANARY_ARM
            or self.arms[0].version != self.canary.version or self.arms[1].name != CHAMPION_ARM
        ):
            raise InvalidArgument(
                "a canary policy has two arms: 'canary' (the candidate) then 'champion'"
            )
        if self.bandit is not None and tuple(versions) != self.bandit.versions:
            raise InvalidArgument("a bandit policy's arms are its bandit versions, in order")

    # -- constructors (each one starts a new experiment) ------------------------------

    @classmethod
    def split(
        cls, weights: Mapping[int, float], *, sticky: bool = False,
        shadows: Iterable[Shadow] = (), experiment_id: str | None = None,
    ) -> Policy:
        """A weighted split, arms in the order of ``weights``."""
        arms = tuple(Arm(int(v), float(w)) for v, w in weights.items())
        return cls(experiment_id or new_experiment_id(), "split", arms, sticky, tuple(shadows))

    @classmethod
    def for_canary(
        cls, champion: int, spec: CanarySpec, *, step: int = 0, sticky: bool = True,
        shadows: Iterable[Shadow] = (), experiment_id: str | None = None,
    ) -> Policy:
        """A canary at ``spec.steps[step]`` percent against ``champion``."""
        if champion == spec.version:
            raise InvalidArgument(f"version {champion} is already the champion")
        share = spec.steps[step]
        arms = (Arm(spec.version, share, CANARY_ARM), Arm(champion, 100.0 - share, CHAMPION_ARM))
        return cls(experiment_id or new_experiment_id(), "canary", arms, sticky,
                   tuple(shadows), canary=spec)

    @classmethod
    def for_bandit(
        cls, spec: BanditSpec, *, sticky: bool = False, shadows: Iterable[Shadow] = (),
        experiment_id: str | None = None,
    ) -> Policy:
        arms = tuple(Arm(v, 1.0) for v in spec.versions)
        return cls(experiment_id or new_experiment_id(), "bandit", arms, sticky,
                   tuple(shadows), bandit=spec)

    def at_canary_step(self, step: int) -> Policy:
        """The same experiment with the candidate at ``canary.steps[step]`` percent."""
        if self.canary is None:
            raise InvalidArgument("not a canary policy")
        share = self.canary.steps[step]
        candidate, champion = self.arms
        return replace(self, arms=(replace(candidate, weight=share),
                                   replace(champion, weight=100.0 - share)))

    # -- queries ------------------------------------------------------------------------

    def versions(self) -> frozenset[int]:
        """Every version this policy can send traffic to (arms, even at weight 0, and
        shadows): the ones a serving process must hold loaded before applying it."""
        return frozenset(a.version for a in self.arms) | {s.version for s in self.shadows}

    def weights(self) -> dict[int, float]:
        return {a.version: a.weight for a in self.arms}

    @property
    def champion(self) -> int | None:
        """The champion version of a canary policy, else None."""
        return self.arms[1].version if self.kind == "canary" else None

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "kind": self.kind,
            "arms": [{"version": a.version, "weight": a.weight, "name": a.name}
                     for a in self.arms],
            "sticky": self.sticky,
            "shadows": [{"version": s.version, "fraction": s.fraction} for s in self.shadows],
            "canary": None if self.canary is None else self.canary.to_json(),
            "bandit": None if self.bandit is None else self.bandit.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        """Inverse of ``to_json``; ``InvalidArgument`` for malformed input."""
        try:
            return cls(
                experiment_id=data["experiment_id"],
                kind=data["kind"],
                arms=tuple(Arm(int(a["version"]), float(a["weight"]), str(a.get("name", "")))
                           for a in data["arms"]),
                sticky=bool(data.get("sticky", False)),
                shadows=tuple(Shadow(int(s["version"]), float(s["fraction"]))
                              for s in data.get("shadows", ())),
                canary=None if data.get("canary") is None else CanarySpec.from_json(
                    data["canary"]),
                bandit=None if data.get("bandit") is None else BanditSpec.from_json(
                    data["bandit"]),
            )
        except InvalidArgument:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidArgument(f"malformed policy {dict(data)!r}: {err!r}") from err


@dataclass(frozen=True)
class RewardCounts:
    """Binary rewards seen by one bandit arm; the posterior is Beta(1 + s, 1 + f)."""

    successes: int = 0
    failures: int = 0


@dataclass(frozen=True)
class CanaryState:
    """The persisted state of a model's canary ramp (one per model, the latest).

    ``revision`` grows with every transition; transitions are compare-and-set on it, so
    two controllers never both advance or both promote. Times are stored UTC timestamps
    (shared across replicas, hence wall clock rather than monotonic).
    """

    model: str
    experiment_id: str
    version: int
    champion: int
    spec: CanarySpec
    status: str
    step_index: int
    step_started_at: datetime
    started_at: datetime
    updated_at: datetime
    revision: int
    reason: str = ""

    @property
    def share(self) -> float:
        """The candidate's current share of traffic, in percent."""
        return self.spec.steps[self.step_index]

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_CANARY


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)


def _check_version(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"{what} must be a positive integer, got {value!r}")


def _check_count(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{what} must be an integer >= 0, got {value!r}")
