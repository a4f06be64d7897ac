"""Routing tables: a model's policy compiled for the hot path, and ``resolve``.

A ``RoutingTable`` is immutable and built off the request path (at policy change, at a
production swap, at a bandit refresh); ``resolve`` only reads it: no I/O, no locks, one
``random()`` (or one keyed hash) and a bisect. A table holds the serving handles of its
versions (the model manager's loaded versions), so the route a request gets and the
handle that serves it always come from the same table.

Route values for the response and the request log:

    routing_arm     the policy arm's name (``"3"`` for version 3 in a split or bandit,
                    ``canary``/``champion`` in a ramp), ``production`` without a policy,
                    ``pinned`` when the request named its version
    experiment_id   the policy's, "" without a policy and for pinned requests (they
                    bypass the experiment, so they must not count in it)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gateway.errors import NotReady, VersionNotFound
from gateway.routing.bandit import thompson_weights
from gateway.routing.hashing import key_digest, unit
from lifecycle.traffic import Policy, RewardCounts

__all__ = [
    "PINNED_ARM",
    "PRODUCTION_ARM",
    "RandomSource",
    "Route",
    "RoutingTable",
    "Target",
    "build_table",
    "resolve",
]

H = TypeVar("H")
PRODUCTION_ARM = "production"
PINNED_ARM = "pinned"


class RandomSource(Protocol):
    """What ``resolve`` needs of a generator (``random.Random`` fits); used only from the
    thread that owns it."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Target(Generic[H]):
    """A version a table can send traffic to; ``label`` is ``str(version)``."""

    version: int
    label: str
    handle: H


@dataclass(frozen=True, slots=True)
class Route(Generic[H]):
    """Where one request goes: the primary version (and its handle), the values to
    return and log, and the versions to mirror a copy to (never the primary)."""

    version: int
    label: str
    handle: H
    arm: str
    experiment_id: str
    routing_key_hash: str = ""
    shadows: tuple[Target[H], ...] = ()

    def parameters(self) -> dict[str, str]:
        """The response parameters every answer carries."""
        return {"routing_arm": self.arm, "experiment_id": self.experiment_id}


@dataclass(frozen=True, eq=False)
class RoutingTable(Generic[H]):
    """One model's compiled policy. Build with ``build_table``; never mutate.

    ``weights`` is each version's effective primary share (summing to 1; bandits: from
    the reward counts); ``targets`` is the serving set (production ∪ the policy's
    versions ∪ explicit loads), each pinnable by its label.
    """

    model: str
    policy: Policy | None
    production: int | None
    experiment_id: str
    sticky: bool
    weights: Mapping[int, float]
    targets: Mapping[int, Target[H]]
    cumulative: tuple[float, ...]
    routes: tuple[Route[H], ...]
    shadows: tuple[tuple[Target[H], float, bytes], ...]
    pinned: Mapping[str, Route[H]]

    @property
    def serving_set(self) -> frozenset[int]:
        return frozenset(self.targets)

    def with_counts(self, counts: Mapping[int, RewardCounts]) -> RoutingTable[H]:
        """A new table with bandit weights recomputed from a snapshot of the reward counts
        (``PolicyStore.bandit_counts``); other tables return themselves."""
        if self.policy is None or self.policy.bandit is None:
            return self
        return _compile(self.model, self.policy, self.production, self.targets, counts)


def build_table(
    model: str,
    policy: Policy | None,
    *,
    production: int | None,
    handles: Mapping[int, H],
    explicit: Iterable[int] = (),
    counts: Mapping[int, RewardCounts] | None = None,
) -> RoutingTable[H]:
    """Compile ``policy`` (None: everything to ``production``) for ``model``.

    ``handles`` maps every loaded-and-warm version to its serving handle; ``production``
    is the production version if it is loaded (else None); ``explicit`` the versions
    loaded on request (those without a handle are left out). ``counts`` are a bandit's
    reward counts (default: none yet). Raises ``NotReady`` when ``production`` or a version
    of the policy has no handle: load and warm them first (``Policy.versions()``), and
    keep the old table when that fails.
    """
    needed = set(policy.versions()) if policy is not None else set()
    if production is not None:
        needed.add(production)
    missing = sorted(v for v in needed if v not in handles)
    if missing:
        raise NotReady(
            f"model '{model}': version(s) {missing} must be loaded and warm before traffic "
            "can be routed to them"
        )
    serving = needed | {v for v in explicit if v in handles}
    targets = {v: Target(v, str(v), handles[v]) for v in sorted(serving)}
    return _compile(model, policy, production, targets, counts or {})


def _compile(
    model: str,
    policy: Policy | None,
    production: int | None,
    targets: Mapping[int, Target[H]],
    counts: Mapping[int, RewardCounts],
) -> RoutingTable[H]:
    experiment = policy.experiment_id if policy is not None else ""
    arms: list[tuple[int, float, str]]
    if policy is None:
        arms = [] if production is None else [(production, 1.0, PRODUCTION_ARM)]
    elif policy.bandit is not None:
        spec = policy.bandit
        shares = thompson_weights([counts.get(v, RewardCounts()) for v in spec.versions],
                                  floor=spec.floor, experiment_id=experiment)
        arms = [(a.version, s, a.name) for a, s in zip(policy.arms, shares, strict=True)]
    else:
        arms = [(a.version, a.weight, a.name) for a in policy.arms]
    arms = [arm for arm in arms if arm[1] > 0]
    total = sum(weight for _, weight, _ in arms)
    cumulative: list[float] = []
    running = 0.0
    for _, weight, _ in arms:
        running += weight
        cumulative.append(running / total)
    if cumulative:
        # Floating sums may end at 0.9999…: a draw in [0, 1) must always find an arm.
        cumulative[-1] = 1.0
    routes = tuple(
        Route(v, targets[v].label, targets[v].handle, name, experiment) for v, _, name in arms
    )
    shadows = tuple(
        (targets[s.version], s.fraction, b"shadow" + s.version.to_bytes(8, "big"))
        for s in (policy.shadows if policy is not None else ())
    )
    pinned = {
        t.label: Route(t.version, t.label, t.handle, PINNED_ARM, "") for t in targets.values()
    }
    return RoutingTable(
        model=model, policy=policy, production=production, experiment_id=experiment,
        sticky=policy.sticky if policy is not None else False,
        weights={v: w / total for v, w, _ in arms}, targets=dict(targets),
        cumulative=tuple(cumulative), routes=routes, shadows=shadows, pinned=pinned,
    )


def resolve(
    table: RoutingTable[H],
    *,
    pinned_version: str = "",
    routing_key: str | None = None,
    rng: RandomSource,
) -> Route[H]:
    """Route one request with ``table`` (see the module docstring for the values).

    ``pinned_version`` (the request's ``model_version``) bypasses the split: the version
    must be in the serving set, else ``VersionNotFound``. ``routing_key`` (see
    ``hashing.extract_routing_key``) is hashed into ``routing_key_hash`` and, if the table
    is sticky, decides the arm and the shadows instead of ``rng``. ``NotReady`` when the
    table has no version to send unpinned traffic to.
    """
    digest = b""
    if routing_key is not None:
        digest = key_digest(routing_key, table.experiment_id)
    if pinned_version:
        route = table.pinned.get(pinned_version)
        if route is None:
            raise VersionNotFound(table.model, pinned_version)
        if not digest:
            return route
        return Route(route.version, route.label, route.handle, route.arm, route.experiment_id,
                     digest.hex())
    routes = table.routes
    if not routes:
        raise NotReady(f"model '{table.model}' has no version loaded and ready")
    sticky_key = routing_key if table.sticky else None
    if len(routes) == 1:
        route = routes[0]
    else:
        draw = unit(digest) if sticky_key is not None else rng.random()
        route = routes[bisect_right(table.cumulative, draw)]
    shadows: tuple[Target[H], ...] = ()
    if table.shadows:
        picked = []
        for target, fraction, salt in table.shadows:
            if sticky_key is not None:
                draw = unit(key_digest(sticky_key, table.experiment_id, salt=salt))
            else:
                draw = rng.random()
            if draw < fraction:
                picked.append(target)
        shadows = tuple(picked)
    if not digest and not shadows:
        return route
    return Route(route.version, route.label, route.handle, route.arm, route.experiment_id,
                 digest.hex(), shadows)
