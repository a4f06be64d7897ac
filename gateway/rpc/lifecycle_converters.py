"""Pure converters between the admin API's lifecycle messages (runs, datasets, triggers)
and the loop's domain objects."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2

from gateway.pb import admin_pb2 as pb
from gateway.rpc.admin_converters import from_struct, struct, timestamp
from gateway.rpc.request_log_converters import timestamp as timestamp_of_us
from lifecycle.datasets import Dataset
from lifecycle.loop_service import TriggerListing
from lifecycle.runs import Run, RunStep

__all__ = ["dataset", "run", "run_step", "trigger_list", "trigger_specs"]


def _time(value: datetime | None) -> Any:
    return None if value is None else timestamp(value)


def run_step(step: RunStep) -> pb.RunStep:
    return pb.RunStep(
        position=step.position, name=step.name, status=step.status,
        start_time=timestamp(step.started_at), end_time=_time(step.finished_at),
        duration_s=step.duration_s or 0.0, detail=struct(step.detail), log=step.log,
    )


def run(r: Run) -> pb.Run:
    return pb.Run(
        id=r.id, model=r.model, status=r.status, trigger=r.trigger, reason=r.reason,
        actor=r.actor, params=struct(r.params), metrics=struct(r.metrics), outcome=r.outcome,
        error=r.error, dataset_id=r.dataset_id or 0,
        candidate_version=r.candidate_version or 0, champion_version=r.champion_version or 0,
        create_time=timestamp(r.created_at), start_time=_time(r.started_at),
        end_time=_time(r.finished_at), heartbeat_time=timestamp(r.heartbeat_at),
        steps=[run_step(s) for s in r.steps], leader_epoch=r.epoch or 0,
        replica=r.replica or "",
    )


def dataset(d: Dataset) -> pb.Dataset:
    return pb.Dataset(
        id=d.id, model=d.model, version=d.version, content_sha256=d.content_sha256,
        artifact_sha256=d.artifact_sha256, rows=d.rows, n_features=d.n_features,
        source=d.source,
        window_start=None if d.window_start_us is None else timestamp_of_us(d.window_start_us),
        window_end=None if d.window_end_us is None else timestamp_of_us(d.window_end_us),
        label_counts=d.label_counts, run_id=d.run_id or 0, create_time=_time(d.created_at),
        metadata=struct(d.metadata),
        features=[pb.FeatureStats(name=p.name, count=p.count, mean=p.mean, std=p.std,
                                  min=p.min, max=p.max) for p in d.profiles],
    )


def trigger_list(listing: TriggerListing) -> pb.TriggerList:
    return pb.TriggerList(
        model=listing.model, revision=listing.revision,
        update_time=_time(listing.updated_at), actor=listing.actor,
        scheduler_running=listing.scheduler_running,
        triggers=[pb.Trigger(spec=struct(t.spec.to_json()), description=t.spec.describe(),
                             next_fire_time=_time(t.next_fire)) for t in listing.triggers],
    )


def _integral(value: Any) -> Any:
    """A ``Struct`` holds every number as a double; counts (``min_labels``) must come
    back as integers for the trigger parser."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def trigger_specs(messages: Iterable[struct_pb2.Struct]) -> list[dict[str, Any]]:
    """The plain trigger dicts of ``SetTriggersRequest.triggers`` (validated later by
    ``TriggerSpec.from_json``)."""
    return [_integral(from_struct(message)) for message in messages]
