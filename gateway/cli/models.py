"""``gateway models list|show``: the registered models and what is served of them."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli import output
from gateway.cli.client import AdminClient, admin_command
from gateway.pb import admin_pb2 as pb

LOAD_STATES = {pb.LOAD_STATE_UNSPECIFIED: "-", pb.LOAD_STATE_NOT_LOADED: "not loaded",
               pb.LOAD_STATE_LOADED: "loaded", pb.LOAD_STATE_FAILED: "failed"}


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "models", help="list and inspect models",
        description="Registered models, their aliases and what this gateway serves.")
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", parents=[common], help="list every model",
                                  description="List every registered model.")
    listing.set_defaults(func=list_models)
    show = commands.add_parser("show", parents=[common], help="show one model",
                               description="Show a model: signature, aliases, loaded versions, "
                                           "and what every replica (or worker) serves of it.")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=show_model)


@admin_command
def list_models(client: AdminClient, args: argparse.Namespace) -> int:
    response = client.call("ListModels", pb.ListModelsRequest())
    if args.json:
        output.print_json([output.to_json(m) for m in response.models])
        return 0
    rows = [
        (m.name, m.task or "-", m.aliases.get("production"), m.served_version or None,
         ",".join(str(v.version) for v in m.loads if v.state == pb.LOAD_STATE_LOADED) or "-",
         m.version_count, output.timestamp(m.create_time))
        for m in response.models
    ]
    print(output.table(("NAME", "TASK", "PRODUCTION", "SERVED", "LOADED", "VERSIONS",
                        "CREATED"), rows))
    return 0


def tensors(specs: Any) -> str:
    return "; ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in specs) or "-"


def load_rows(loads: Any) -> list[tuple[Any, ...]]:
    return [(v.version, LOAD_STATES[v.state], v.production, v.explicit, v.in_flight,
             f"{v.warmup_p99_us:.0f}us" if v.state == pb.LOAD_STATE_LOADED else "-",
             f"{v.rss_bytes / 2**20:.1f}MiB" if v.state == pb.LOAD_STATE_LOADED else "-",
             v.failure or "-")
            for v in loads]


LOAD_HEADERS = ("VERSION", "STATE", "PRODUCTION", "EXPLICIT", "IN-FLIGHT", "WARMUP-P99",
                "RSS", "FAILURE")


@admin_command
def show_model(client: AdminClient, args: argparse.Namespace) -> int:
    model = client.call("GetModel", pb.GetModelRequest(name=args.name))
    if args.json:
        output.print_json(output.to_json(model))
        return 0
    print(output.fields([
        ("name", model.name),
        ("task", model.task or "-"),
        ("created", output.timestamp(model.create_time)),
        ("aliases", output.mapping(dict(model.aliases))),
        ("versions", f"{model.version_count} (latest {model.latest_version or '-'})"),
        ("serving", model.serving),
        ("served version", model.served_version or None),
        ("in flight", model.in_flight),
        ("inputs", tensors(model.signature.inputs)),
        ("outputs", tensors(model.signature.outputs)),
    ]))
    if model.loads:
        print()
        print(output.table(LOAD_HEADERS, load_rows(model.loads)))
    if model.replicas:
        print()
        print(output.table(REPLICA_HEADERS, replica_rows(model.replicas)))
    return 0


REPLICA_HEADERS = ("REPLICA", "LEADER", "SERVING VERSION", "LOADED", "READY", "LAST SEEN")


def replica_rows(replicas: Any) -> list[tuple[Any, ...]]:
    """One row per replica; one that does not know the model says so under LOADED."""
    return [(r.replica_id, r.leader, r.served_version or None, _held(r), r.ready,
             f"{r.age_s:.1f}s ago" + (" (stale)" if r.stale else ""))
            for r in replicas]


def _held(replica: Any) -> str:
    if not replica.tracked:
        return "(model unknown)"
    held = ",".join(str(v) for v in replica.loaded_versions) or "-"
    if replica.failed_versions:
        held += f" (failed: {','.join(str(v) for v in replica.failed_versions)})"
    return held
