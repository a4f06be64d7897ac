"""Pure converters between the admin protobuf messages and lifecycle's domain objects."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from gateway.pb import admin_pb2 as pb
from lifecycle.deployer import VersionLoad
from lifecycle.domain import AliasChange, Event, Signature
from lifecycle.replicas import ReplicaServing
from lifecycle.service import ModelInfo, Upload, VersionInfo

LOAD_STATES: dict[str, pb.LoadState] = {
    "not_loaded": pb.LOAD_STATE_NOT_LOADED,
    "loaded": pb.LOAD_STATE_LOADED,
    "failed": pb.LOAD_STATE_FAILED,
}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def json_value(value: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]


def from_struct(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def signature(sig: Signature) -> pb.Signature:
    def tensors(specs: Any) -> list[pb.TensorSpec]:
        return [pb.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in specs]

    return pb.Signature(inputs=tensors(sig.inputs), outputs=tensors(sig.outputs))


def version_load(load: VersionLoad) -> pb.VersionLoad:
    return pb.VersionLoad(
        model=load.model, version=load.version, state=LOAD_STATES[load.state],
        production=load.production, explicit=load.explicit, in_flight=load.in_flight,
        failure=load.failure, warmup_p99_us=load.warmup_p99_us, rss_bytes=load.rss_bytes,
    )


def model(info: ModelInfo) -> pb.Model:
    state = info.state
    return pb.Model(
        name=info.model.name, task=info.model.task, signature=signature(info.model.signature),
        create_time=timestamp(info.model.created_at), aliases=info.aliases,
        version_count=info.version_count, latest_version=info.latest_version or 0,
        serving=info.serving, served_version=state.production or 0,
        loads=[version_load(v) for v in state.versions], in_flight=state.in_flight,
        replicas=[replica_serving(r) for r in info.replicas],
    )


def replica_serving(seen: ReplicaServing) -> pb.ReplicaServing:
    replica, serving = seen.replica, seen.serving
    message = pb.ReplicaServing(
        replica_id=replica.id, host=replica.host, pid=replica.pid, leader=replica.leader,
        tracked=serving is not None, start_time=timestamp(replica.started_at),
        update_time=timestamp(replica.updated_at), age_s=seen.age_s, stale=seen.stale,
    )
    if serving is not None:
        message.served_version = serving.production or 0
        message.loaded_versions.extend(serving.loaded)
        message.failed_versions.extend(serving.failed)
        message.ready = serving.ready
        message.policy = serving.policy
        message.experiment_id = serving.experiment
        message.weights.update(dict(serving.weights))
    return message


def version(info: VersionInfo) -> pb.ModelVersion:
    v = info.version
    return pb.ModelVersion(
        model=v.model, version=v.version, status=v.status, sha256=v.sha256, size_bytes=v.size,
        create_time=timestamp(v.created_at), description=v.description, tags=v.tags,
        aliases=info.aliases, params=struct(info.params), metrics=struct(info.metrics),
        metadata=struct(info.extra_metadata),
        lineage=pb.Lineage(source=info.source, registered_by=info.registered_by,
                           details=struct(info.lineage)),
        load=version_load(info.load),
    )


def alias_change(change: AliasChange) -> pb.AliasChange:
    return pb.AliasChange(model=change.model, alias=change.alias,
                          previous_version=change.previous, version=change.current)


def event(e: Event) -> pb.Event:
    detail = {k: v for k, v in e.detail.items() if k not in ("before", "after")}
    return pb.Event(
        id=e.id, time=timestamp(e.time), actor=e.actor, action=e.action, model=e.model or "",
        version=e.version, before=json_value(e.detail.get("before")),
        after=json_value(e.detail.get("after")), detail=struct(detail),
    )


def upload(header: pb.RegisterVersionHeader) -> Upload:
    return Upload(
        model=header.model, description=header.description, tags=tuple(header.tags),
        params=from_struct(header.params), metrics=from_struct(header.metrics),
        source=header.source, metadata=from_struct(header.metadata), task=header.task,
        sha256=header.sha256,
    )
