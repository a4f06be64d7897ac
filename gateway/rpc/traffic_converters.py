"""Pure converters between the traffic messages of ``gateway.admin.v1`` and the domain."""

from __future__ import annotations

from gateway.pb import admin_pb2 as pb
from gateway.traffic_service import TrafficStatus
from lifecycle.traffic import (
    BanditSpec,
    CanaryGuards,
    CanarySpec,
    CanaryState,
    Policy,
    RewardRule,
    Shadow,
)

__all__ = ["bandit_spec", "canary_spec", "shadows", "split_weights", "status"]


def split_weights(request: pb.SetTrafficPolicyRequest) -> dict[int, float]:
    return {int(a.version): float(a.weight) for a in request.arms}


def shadows(items: object) -> tuple[Shadow, ...]:
    return tuple(Shadow(int(s.version), float(s.fraction)) for s in items)  # type: ignore[attr-defined]


def canary_spec(request: pb.StartCanaryRequest) -> CanarySpec:
    defaults = CanarySpec(version=max(int(request.version), 1))
    guards = defaults.guards
    if request.HasField("guards"):
        g = request.guards
        guards = CanaryGuards(
            max_error_rate_delta=g.max_error_rate_delta, max_p99_ratio=g.max_p99_ratio,
            p99_slack_ms=g.p99_slack_ms, max_quality_drop=g.max_quality_drop,
            min_labels=int(g.min_labels))
    return CanarySpec(
        version=int(request.version), steps=tuple(request.steps) or defaults.steps,
        min_requests=int(request.min_requests) or defaults.min_requests,
        min_seconds=float(request.min_seconds) or defaults.min_seconds, guards=guards)


def _reward(message: pb.RewardRule) -> RewardRule:
    return RewardRule(kind=message.kind or "match", threshold=message.threshold,
                      output=message.output)


def bandit_spec(request: pb.StartBanditRequest) -> BanditSpec:
    reward = _reward(request.reward) if request.HasField("reward") else RewardRule()
    if request.HasField("floor"):
        return BanditSpec(tuple(int(v) for v in request.versions), request.floor, reward)
    return BanditSpec(tuple(int(v) for v in request.versions), reward=reward)


def policy(value: Policy) -> pb.TrafficPolicy:
    message = pb.TrafficPolicy(
        experiment_id=value.experiment_id, kind=value.kind, sticky=value.sticky,
        arms=[pb.TrafficArm(version=a.version, weight=a.weight, name=a.name)
              for a in value.arms],
        shadows=[pb.TrafficShadow(version=s.version, fraction=s.fraction)
                 for s in value.shadows])
    if value.bandit is not None:
        message.floor = value.bandit.floor
        rule = value.bandit.reward
        message.reward.CopyFrom(pb.RewardRule(kind=rule.kind, threshold=rule.threshold,
                                              output=rule.output))
    return message


def canary(state: CanaryState) -> pb.CanaryRamp:
    spec, g = state.spec, state.spec.guards
    message = pb.CanaryRamp(
        version=state.version, champion=state.champion, steps=list(spec.steps),
        step_index=state.step_index, status=state.status, reason=state.reason,
        min_requests=spec.min_requests, min_seconds=spec.min_seconds,
        guards=pb.CanaryGuards(
            max_error_rate_delta=g.max_error_rate_delta, max_p99_ratio=g.max_p99_ratio,
            p99_slack_ms=g.p99_slack_ms, max_quality_drop=g.max_quality_drop,
            min_labels=g.min_labels))
    message.step_started_at.FromDatetime(state.step_started_at)
    return message


def status(value: TrafficStatus) -> pb.TrafficPolicyStatus:
    message = pb.TrafficPolicyStatus(
        model=value.model, production=value.production or 0,
        serving_set=list(value.serving_set))
    if value.policy is not None:
        message.policy.CopyFrom(policy(value.policy))
    if value.canary is not None:
        message.canary.CopyFrom(canary(value.canary))
    for arm in value.arms:
        message.arms.add(
            version=arm.version, arm=arm.arm, weight=arm.weight, requests=arm.requests,
            errors=arm.errors, p50_ms=arm.p50_ms, p99_ms=arm.p99_ms, shadow=arm.shadow,
            mirrored=arm.mirrored, dropped=arm.dropped, shadow_failed=arm.shadow_failed,
            has_agreement=arm.agreement is not None, agreement=arm.agreement or 0.0,
            labelled=arm.labelled, has_quality=arm.quality is not None,
            quality=arm.quality or 0.0)
    return message
