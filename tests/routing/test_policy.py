"""The policy domain: validation and the JSON round trip."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np
import pytest

from lifecycle.errors import InvalidArgument
from lifecycle.traffic import (
    BanditSpec,
    CanaryGuards,
    CanarySpec,
    Policy,
    RewardRule,
    Shadow,
)


def test_every_kind_round_trips_through_json() -> None:
    policies = [
        Policy.split({3: 90, 4: 10}, sticky=True, shadows=[Shadow(5, 0.2)]),
        Policy.for_canary(1, CanarySpec(2, steps=(5, 50), min_requests=10, min_seconds=3,
                                        guards=CanaryGuards(max_p99_ratio=2.0))),
        Policy.for_bandit(BanditSpec((3, 4), floor=0.2,
                                     reward=RewardRule("threshold", threshold=0.7))),
    ]
    for policy in policies:
        text = json.dumps(policy.to_json())
        assert Policy.from_json(json.loads(text)) == policy


def test_each_constructor_starts_a_new_experiment() -> None:
    first, second = Policy.split({3: 50, 4: 50}), Policy.split({3: 50, 4: 50})
    assert first.experiment_id != second.experiment_id
    assert first.versions() == frozenset({3, 4})


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Policy.split({3: 0, 4: 0}), "positive weight"),
        (lambda: Policy.split({3: -1, 4: 2}), ">= 0"),
        (lambda: Policy.split({3: float("nan")}), "finite"),
        (lambda: Policy.split({3: 90, 4: 10}, shadows=[Shadow(4, 0.5)]), "both"),
        (lambda: Policy.split({3: 1}, shadows=[Shadow(5, 0.5), Shadow(5, 0.1)]), "once"),
        (lambda: Shadow(5, 0.0), "(0, 1]"),
        (lambda: Policy.split({3: 1}, experiment_id="has space"), "experiment id"),
        (lambda: Policy.split({3: 1}, experiment_id="x" * 65), "experiment id"),
        (lambda: CanarySpec(2, steps=(50, 25)), "increase"),
        (lambda: CanarySpec(2, steps=(100,)), "below 100"),
        (lambda: Policy.for_canary(2, CanarySpec(2)), "already the champion"),
        (lambda: BanditSpec((3,)), "two or more"),
        (lambda: BanditSpec((3, 4), floor=1.5), "floor"),
        (lambda: Policy.from_json({"kind": "split"}), "malformed"),
    ],
)
def test_malformed_policies_are_invalid_arguments(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        build()


def test_a_canary_step_keeps_the_experiment() -> None:
    policy = Policy.for_canary(1, CanarySpec(2, steps=(5, 25, 50, 100)))
    later = policy.at_canary_step(2)
    assert later.experiment_id == policy.experiment_id
    assert later.weights() == {2: 50.0, 1: 50.0}
    assert [a.name for a in later.arms] == ["canary", "champion"]
    assert later.champion == 1


def test_reward_rules() -> None:
    match = RewardRule()
    scores = np.array([[0.2, 0.8]], dtype=np.float32)
    assert match.reward(1, {"probabilities": scores}) is True
    assert match.reward(0, {"probabilities": scores}) is False
    assert match.reward(1, {"label": np.array([1], dtype=np.int64)}) is True
    assert match.reward(1, None) is None
    named = RewardRule(output="label")
    assert named.reward(1, {"probabilities": scores}) is None
    threshold = RewardRule("threshold", threshold=0.5)
    assert threshold.reward(0.7) is True
    assert threshold.reward(0.2) is False
