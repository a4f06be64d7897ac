"""Thompson sampling weights for a bandit routing table.

Thompson sampling draws θ_i ~ Beta(1 + successes_i, 1 + failures_i) per request and serves
the argmax, so between two snapshots of the counts each arm is served with probability
P(arm i is best | posterior). We estimate that probability once per snapshot (Monte Carlo,
seeded from the experiment and the counts, so every replica computes the same weights)
and route with it like a weighted split: the hot path stays one ``random()`` and a bisect,
and sticky keys work for bandits too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from lifecycle.traffic import RewardCounts

__all__ = ["DRAWS", "thompson_weights"]

DRAWS = 8192
"""Posterior draws per snapshot: the share estimate is within about ±1 point."""


def thompson_weights(
    counts: Sequence[RewardCounts], *, floor: float, experiment_id: str, draws: int = DRAWS
) -> list[float]:
    """Traffic shares (summing to 1) for arms with these reward counts: each arm gets
    ``floor / N`` plus ``(1 - floor)`` × its probability of being the best arm."""
    n = len(counts)
    if n == 0:
        return []
    if len(set(counts)) == 1:
        # Identical posteriors (e.g. no feedback yet): each is best with probability 1/N.
        return [1.0 / n] * n
    alpha = np.array([1 + c.successes for c in counts], dtype=np.float64)
    beta = np.array([1 + c.failures for c in counts], dtype=np.float64)
    seed = hashlib.blake2b(
        repr((experiment_id, [(c.successes, c.failures) for c in counts])).encode(),
        digest_size=8,
    ).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
    samples = rng.beta(alpha, beta, size=(draws, n))
    best = np.bincount(samples.argmax(axis=1), minlength=n) / draws
    return [float(floor / n + (1 - floor) * p) for p in best]
