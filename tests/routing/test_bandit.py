"""Thompson sampling: weights from reward counts, and convergence in a simulation."""

from __future__ import annotations

import random
from collections import Counter

from gateway.routing import build_table, resolve, thompson_weights
from lifecycle.policies import PolicyStore
from lifecycle.traffic import BanditSpec, Policy, RewardCounts

HANDLES = {v: f"handle-{v}" for v in range(1, 6)}


def test_weights_respect_the_floor_and_favour_the_better_posterior() -> None:
    weights = thompson_weights([RewardCounts(10, 90), RewardCounts(60, 40)], floor=0.2,
                               experiment_id="exp")
    assert abs(sum(weights) - 1) < 1e-9
    assert weights[0] >= 0.1 and weights[0] < 0.11
    assert weights[1] > 0.89
    even = thompson_weights([RewardCounts(), RewardCounts()], floor=0.0, experiment_id="exp")
    assert abs(even[0] - 0.5) < 0.02
    # Deterministic: every replica computes the same weights from the same snapshot.
    assert weights == thompson_weights([RewardCounts(10, 90), RewardCounts(60, 40)],
                                       floor=0.2, experiment_id="exp")


def test_a_non_bandit_table_ignores_counts() -> None:
    t = build_table("fraud", Policy.split({3: 1}), production=1, handles=HANDLES)
    assert t.with_counts({3: RewardCounts(5, 5)}) is t


def test_the_bandit_converges_to_the_better_arm(store: PolicyStore, model: str) -> None:
    spec = BanditSpec((3, 4), floor=0.1)
    policy = Policy.for_bandit(spec)
    store.set_policy(model, policy, actor="test")
    table = build_table(model, policy, production=1, handles=HANDLES,
                        counts=store.bandit_counts(policy.experiment_id))
    assert table.weights == {3: 0.5, 4: 0.5}
    success = {3: 0.3, 4: 0.6}
    route_rng, world = random.Random(2026), random.Random(511)
    picks: list[int] = []
    pending: dict[int, Counter[bool]] = {3: Counter(), 4: Counter()}
    for round_ in range(1, 2001):
        route = resolve(table, rng=route_rng)
        picks.append(route.version)
        pending[route.version][world.random() < success[route.version]] += 1
        if round_ % 20 == 0:
            # Feedback lands in the database; the router refreshes from a snapshot.
            for version, seen in pending.items():
                store.add_rewards(policy.experiment_id, version,
                                  successes=seen[True], failures=seen[False])
                seen.clear()
            table = table.with_counts(store.bandit_counts(policy.experiment_id))
    last = Counter(picks[-500:])
    assert last[4] / 500 >= 0.8
    # The exploration floor keeps the worse arm sampled.
    assert table.weights[3] >= spec.floor / 2
    assert last[3] > 0
    counts = store.bandit_counts(policy.experiment_id)
    assert sum(c.successes + c.failures for c in counts.values()) == 2000
