"""Live outcomes of experiments, read from the request log: per-arm stats for the canary
controller's guards, and bandit rewards from feedback.

Both read the log through ``RequestStore.query_requests`` (paged, short transactions) and
run in the controller's executor, never on the serving path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from lifecycle.canary import ArmStats
from lifecycle.policies import PolicyStore
from lifecycle.request_records import Label, LoggedRequest, Tensor
from lifecycle.request_store import RequestStore
from lifecycle.traffic import RewardCounts, RewardRule

PINNED_ARM = "pinned"
QUALITY = RewardRule(kind="match")


def label_value(label: Label) -> float | None:
    value = label.value
    if isinstance(value, Tensor):
        array = value.to_numpy()
        return float(array.reshape(-1)[0]) if array.size else None
    return float(value)


def reward_of(record: LoggedRequest, rule: RewardRule) -> bool | None:
    """The reward (or, with ``QUALITY``, correctness) of one labelled record."""
    if record.feedback is None:
        return None
    label = label_value(record.feedback.label)
    if label is None:
        return None
    outputs = {t.name: t.to_numpy() for t in record.outputs}
    return rule.reward(label, outputs)


@dataclass
class _Arm:
    requests: int = 0
    errors: int = 0
    latencies_us: list[int] = field(default_factory=list)
    labelled: int = 0
    correct: int = 0


class RequestLogArmStats:
    """``lifecycle.canary.ArmStatsSource`` over the request log. Quality is the share of
    labelled requests whose predicted class matches the label (``RewardRule('match')``)."""

    def __init__(self, store: RequestStore, rule: RewardRule = QUALITY) -> None:
        self._store = store
        self._rule = rule

    def arm_stats(self, model: str, experiment_id: str, since: datetime) -> Mapping[int, ArmStats]:
        arms: dict[int, _Arm] = {}
        since_us = int(since.timestamp() * 1_000_000)
        for record in self._store.query_requests(model, since=since_us, include_shadow=False):
            if record.experiment_id != experiment_id or record.arm == PINNED_ARM:
                continue
            arm = arms.setdefault(record.version, _Arm())
            arm.requests += 1
            if record.status != "OK":
                arm.errors += 1
                continue
            arm.latencies_us.append(record.latency_us)
            reward = reward_of(record, self._rule)
            if reward is not None:
                arm.labelled += 1
                arm.correct += int(reward)
        return {version: ArmStats(
            requests=a.requests, errors=a.errors,
            p99_ms=float(np.percentile(a.latencies_us, 99)) / 1000 if a.latencies_us else 0.0,
            labelled=a.labelled, quality=a.correct / a.labelled if a.labelled else None,
        ) for version, a in arms.items()}


class BanditRewarder:
    """Turns feedback on a bandit's requests into Beta-posterior counts in the database.

    Recomputes each arm's totals from the log and adds the difference to the stored
    counts, so a restart never counts a reward twice. Meant for the one process that runs
    the lifecycle (with replicas: the leader).
    """

    def __init__(self, store: RequestStore, policies: PolicyStore) -> None:
        self._store = store
        self._policies = policies

    def update(self) -> dict[str, dict[int, RewardCounts]]:
        """Bring every running bandit's counts up to date; returns the new totals."""
        updated: dict[str, dict[int, RewardCounts]] = {}
        for model, policy in self._policies.list_policies().items():
            if policy.bandit is None:
                continue
            totals: dict[int, list[int]] = {v: [0, 0] for v in policy.bandit.versions}
            for record in self._store.query_requests(model, has_feedback=True,
                                                     include_shadow=False):
                if record.experiment_id != policy.experiment_id or record.version not in totals:
                    continue
                reward = reward_of(record, policy.bandit.reward)
                if reward is not None:
                    totals[record.version][0 if reward else 1] += 1
            stored = self._policies.bandit_counts(policy.experiment_id)
            for version, (successes, failures) in totals.items():
                have = stored.get(version, RewardCounts())
                delta_s, delta_f = successes - have.successes, failures - have.failures
                if delta_s > 0 or delta_f > 0:
                    self._policies.add_rewards(policy.experiment_id, version,
                                               successes=max(delta_s, 0),
                                               failures=max(delta_f, 0))
            updated[model] = self._policies.bandit_counts(policy.experiment_id)
        return updated
