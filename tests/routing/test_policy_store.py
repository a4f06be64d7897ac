"""The policy store: persistence, validation, events, canary compare-and-set, rewards."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from lifecycle.db import Database, make_engine
from lifecycle.errors import (
    ConflictError,
    InvalidArgument,
    ModelNotFound,
    PreconditionError,
    VersionNotFound,
)
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.traffic import BanditSpec, CanarySpec, Policy, RewardCounts, Shadow
from tests.routing.conftest import START


def test_a_policy_survives_a_new_database_on_the_same_file(
    store: PolicyStore, model: str, db_url: str
) -> None:
    assert store.get_policy(model) is None
    policy = Policy.split({3: 90, 4: 10}, sticky=True, shadows=[Shadow(5, 0.2)])
    assert store.set_policy(model, policy, actor="alice") == policy
    reopened = Database(make_engine(db_url))
    try:
        assert PolicyStore(reopened).get_policy(model) == policy
        assert PolicyStore(reopened).list_policies() == {model: policy}
    finally:
        reopened.close()


def test_changes_are_recorded_as_events(
    store: PolicyStore, registry: Registry, model: str
) -> None:
    first = Policy.split({3: 50, 4: 50})
    second = Policy.split({3: 0, 4: 100})
    store.set_policy(model, first, actor="alice")
    store.set_policy(model, second, actor="bob")
    assert store.clear_policy(model, actor="carol") == second
    events = registry.list_events(model=model, limit=3)
    assert [(e.action, e.actor) for e in events] == [
        ("policy.clear", "carol"), ("policy.set", "bob"), ("policy.set", "alice")]
    assert events[1].detail == {"before": first.to_json(), "after": second.to_json()}
    assert events[0].detail == {"before": second.to_json(), "after": None}
    assert store.get_policy(model) is None


def test_ending_an_experiment_clears_the_policy_with_the_reason(
    store: PolicyStore, registry: Registry, model: str
) -> None:
    assert store.end_experiment(model, actor="gateway", reason="promote") is None
    assert registry.list_events(model=model, action="experiment.end") == []
    policy = Policy.split({3: 50, 4: 50})
    store.set_policy(model, policy, actor="alice")
    assert store.end_experiment(model, actor="gateway", reason="promote to 3") == policy
    assert store.get_policy(model) is None
    (event,) = registry.list_events(model=model, action="experiment.end")
    assert event.detail["reason"] == "promote to 3"
    assert event.detail["experiment_id"] == policy.experiment_id


def test_policies_name_existing_registered_versions_of_existing_models(
    store: PolicyStore, registry: Registry, model: str
) -> None:
    with pytest.raises(ModelNotFound):
        store.set_policy("nope", Policy.split({1: 1}), actor="alice")
    with pytest.raises(VersionNotFound):
        store.set_policy(model, Policy.split({3: 50, 9: 50}), actor="alice")
    with pytest.raises(VersionNotFound):
        store.set_policy(model, Policy.split({3: 1}, shadows=[Shadow(9, 0.1)]), actor="alice")
    registry.set_status(model, 4, "rejected", actor="test", reason="bad")
    with pytest.raises(PreconditionError, match="rejected"):
        store.set_policy(model, Policy.split({3: 50, 4: 50}), actor="alice")
    canary = Policy.for_canary(1, CanarySpec(3))
    with pytest.raises(InvalidArgument, match="start_canary"):
        store.set_policy(model, canary, actor="alice")
    with pytest.raises(InvalidArgument, match="actor"):
        store.set_policy(model, Policy.split({3: 1}), actor="")
    assert store.get_policy(model) is None


def test_a_canary_ramps_from_production_and_replaces_the_policy(
    store: PolicyStore, registry: Registry, model: str
) -> None:
    store.set_policy(model, Policy.split({3: 50, 4: 50}), actor="alice")
    state = store.start_canary(model, CanarySpec(2, steps=(5, 50)), actor="bob", now=START)
    assert (state.status, state.step_index, state.champion, state.share) == (
        "running", 0, 1, 5.0)
    policy = store.get_policy(model)
    assert policy is not None and policy.kind == "canary"
    assert policy.experiment_id == state.experiment_id
    assert policy.weights() == {2: 5.0, 1: 95.0} and policy.sticky
    with pytest.raises(PreconditionError, match="running"):
        store.start_canary(model, CanarySpec(3), actor="bob", now=START)
    store.clear_policy(model, actor="bob")
    ended = store.get_canary(model)
    assert ended is not None and ended.status == "ended"
    with pytest.raises(InvalidArgument, match="champion"):
        store.start_canary(model, CanarySpec(1), actor="bob", now=START)
    (event,) = registry.list_events(model=model, action="canary.start")
    assert event.version == 2 and event.detail["champion"] == 1


def test_a_canary_needs_a_production_version(store: PolicyStore, registry: Registry,
                                             model: str) -> None:
    registry.delete_alias(model, "production", actor="test")
    with pytest.raises(PreconditionError, match="no production"):
        store.start_canary(model, CanarySpec(2), actor="bob", now=START)


def test_canary_transitions_are_compare_and_set(store: PolicyStore, model: str) -> None:
    state = store.start_canary(model, CanarySpec(2, steps=(5, 25, 50)), actor="c", now=START)
    later = START + timedelta(minutes=1)
    advanced = store.advance_canary(state, now=later, actor="c", detail={"2": {"requests": 9}})
    assert (advanced.step_index, advanced.step_started_at, advanced.revision) == (
        1, later, state.revision + 1)
    policy = store.get_policy(model)
    assert policy is not None and policy.weights() == {2: 25.0, 1: 75.0}
    assert policy.experiment_id == state.experiment_id
    with pytest.raises(ConflictError):
        store.advance_canary(state, now=later, actor="c")
    with pytest.raises(ConflictError):
        store.begin_promotion(state, now=later, actor="c")
    promoting = store.begin_promotion(advanced, now=later, actor="c")
    with pytest.raises(ConflictError):
        store.begin_promotion(advanced, now=later, actor="c")
    done = store.finish_canary(promoting, "promoted", now=later, actor="c", reason="ok")
    assert done.status == "promoted" and not done.active
    assert store.get_policy(model) is None
    assert store.list_canaries(active_only=True) == []
    assert store.list_canaries() == [done]


def test_replacing_a_running_canarys_policy_ends_it(store: PolicyStore, model: str) -> None:
    state = store.start_canary(model, CanarySpec(2), actor="c", now=START)
    store.set_policy(model, Policy.split({3: 1}), actor="alice")
    ended = store.get_canary(model)
    assert ended is not None and ended.status == "ended"
    with pytest.raises(ConflictError):
        store.advance_canary(state, now=START, actor="c")
    # A new ramp may start once the old one is over.
    again = store.start_canary(model, CanarySpec(2), actor="c", now=START)
    assert again.status == "running" and again.revision > ended.revision


def test_a_bandit_starts_with_zero_counts_and_counts_atomically_across_replicas(
    store: PolicyStore, model: str, db_url: str
) -> None:
    policy = Policy.for_bandit(BanditSpec((3, 4)))
    store.set_policy(model, policy, actor="alice")
    exp = policy.experiment_id
    assert store.bandit_counts(exp) == {3: RewardCounts(), 4: RewardCounts()}
    other = Database(make_engine(db_url))  # a second replica on the same database
    stores = [store, PolicyStore(other)]

    rewards = [(3 if i % 2 else 4, i % 3 == 0) for i in range(100)]
    counted: list[bool] = []

    def feed(s: PolicyStore) -> None:
        for version, reward in rewards:
            counted.append(s.record_reward(exp, version, reward))

    try:
        threads = [threading.Thread(target=feed, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        other.close()
    assert counted == [True] * 200
    expected = {
        v: RewardCounts(2 * sum(r for w, r in rewards if w == v),
                        2 * sum(not r for w, r in rewards if w == v))
        for v in (3, 4)
    }
    assert store.bandit_counts(exp) == expected
    assert not store.record_reward(exp, 5, True)
    assert not store.record_reward("unknown-experiment", 3, True)
    with pytest.raises(InvalidArgument):
        store.add_rewards(exp, 3, successes=-1)
