"""Commands that change what is served: ``promote``, ``rollback``, ``alias``, ``archive``,
``load`` and ``unload``."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli import output
from gateway.cli.client import AdminClient, admin_command
from gateway.cli.models import LOAD_STATES
from gateway.cli.versions import version_number
from gateway.pb import admin_pb2 as pb


def add_parsers(subparsers: Any, common: argparse.ArgumentParser) -> None:
    promote = subparsers.add_parser(
        "promote", parents=[common], help="serve a version as production",
        description="Load and warm VERSION, point 'production' at it, swap, then drain and "
                    "unload the old version. If the load or warm-up fails, the current "
                    "version keeps serving and the alias does not move.")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("version", metavar="VERSION", type=version_number)
    promote.set_defaults(func=run_promote)

    rollback = subparsers.add_parser(
        "rollback", parents=[common], help="serve the previous production version again",
        description="Point 'production' back at the version that held it before the current "
                    "one (loaded and warmed first); again goes one step further back.")
    rollback.add_argument("name", metavar="NAME")
    rollback.set_defaults(func=run_rollback)

    alias = subparsers.add_parser(
        "alias", parents=[common], help="point an alias (not production) at a version",
        description="Point ALIAS at VERSION. 'production' moves only with promote and "
                    "rollback, which load the version first.")
    alias.add_argument("name", metavar="NAME")
    alias.add_argument("alias", metavar="ALIAS")
    alias.add_argument("version", metavar="VERSION", type=version_number)
    alias.add_argument("--expect", type=int, metavar="VERSION",
                       help="only if the alias holds this version now (0: does not exist)")
    alias.set_defaults(func=run_alias)

    archive = subparsers.add_parser(
        "archive", parents=[common], help="archive a version (and unload it)",
        description="Mark VERSION archived and stop serving it. Refused while an alias "
                    "points at it.")
    archive.add_argument("name", metavar="NAME")
    archive.add_argument("version", metavar="VERSION", type=version_number)
    archive.add_argument("--reason", default="", help="recorded in the event")
    archive.set_defaults(func=run_archive)

    load = subparsers.add_parser(
        "load", parents=[common], help="keep a version loaded besides production",
        description="Load and warm VERSION so requests naming it are served; restored at "
                    "restart.")
    load.add_argument("name", metavar="NAME")
    load.add_argument("version", metavar="VERSION", type=version_number)
    load.set_defaults(func=run_load)

    unload = subparsers.add_parser(
        "unload", parents=[common], help="undo load",
        description="Stop serving VERSION explicitly (drained first). Refused for the "
                    "production version.")
    unload.add_argument("name", metavar="NAME")
    unload.add_argument("version", metavar="VERSION", type=version_number)
    unload.set_defaults(func=run_unload)


def _change(change: pb.AliasChange, args: argparse.Namespace, note: str = "") -> None:
    if args.json:
        output.print_json(output.to_json(change))
        return
    before = change.previous_version if change.HasField("previous_version") else "-"
    print(f"{change.model}: {change.alias} {before} -> {change.version}{note}")


@admin_command
def run_promote(client: AdminClient, args: argparse.Namespace) -> int:
    change = client.call("Promote", pb.PromoteRequest(model=args.name, version=args.version))
    _change(change, args)
    return 0


@admin_command
def run_rollback(client: AdminClient, args: argparse.Namespace) -> int:
    _change(client.call("Rollback", pb.RollbackRequest(model=args.name)), args,
            " (rolled back)")
    return 0


@admin_command
def run_alias(client: AdminClient, args: argparse.Namespace) -> int:
    request = pb.SetAliasRequest(model=args.name, alias=args.alias, version=args.version)
    if args.expect is not None:
        request.expected_version = args.expect
    _change(client.call("SetAlias", request), args)
    return 0


@admin_command
def run_archive(client: AdminClient, args: argparse.Namespace) -> int:
    version = client.call("ArchiveVersion", pb.ArchiveVersionRequest(
        model=args.name, version=args.version, reason=args.reason))
    if args.json:
        output.print_json(output.to_json(version))
    else:
        print(f"{version.model} version {version.version}: {version.status}")
    return 0


def _load(load: pb.VersionLoad, args: argparse.Namespace) -> None:
    if args.json:
        output.print_json(output.to_json(load))
        return
    notes = [n for n, on in (("production", load.production), ("explicit", load.explicit))
             if on]
    suffix = f" ({', '.join(notes)})" if notes else ""
    failure = f": {load.failure}" if load.failure else ""
    print(f"{load.model} version {load.version}: {LOAD_STATES[load.state]}{suffix}{failure}")


@admin_command
def run_load(client: AdminClient, args: argparse.Namespace) -> int:
    _load(client.call("LoadVersion", pb.LoadVersionRequest(
        model=args.name, version=args.version)), args)
    return 0


@admin_command
def run_unload(client: AdminClient, args: argparse.Namespace) -> int:
    _load(client.call("UnloadVersion", pb.UnloadVersionRequest(
        model=args.name, version=args.version)), args)
    return 0
