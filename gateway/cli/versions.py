"""``gateway versions list|show|download``: a model's versions and their artifacts."""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any

from gateway.cli import output
from gateway.cli.client import AdminClient, CliError, admin_command
from gateway.cli.models import LOAD_HEADERS, LOAD_STATES, load_rows
from gateway.pb import admin_pb2 as pb

STATUSES = ("registered", "archived", "rejected")


def version_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a version number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"version numbers start at 1, got {value}")
    return value


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "versions", help="list, inspect and download versions",
        description="A model's versions: status, aliases, tags, metrics, load state.")
    commands = parser.add_subparsers(dest="versions_command", required=True,
                                     metavar="COMMAND")
    listing = commands.add_parser("list", parents=[common], help="list a model's versions",
                                  description="List a model's versions, oldest first.")
    listing.add_argument("name", metavar="NAME")
    listing.add_argument("--tag", help="only versions with this tag")
    listing.add_argument("--status", choices=STATUSES, help="only versions with this status")
    listing.add_argument("--text", help="only versions whose description contains this")
    listing.set_defaults(func=list_versions)

    show = commands.add_parser("show", parents=[common], help="show one version",
                               description="Show a version with its lineage and load state.")
    show.add_argument("name", metavar="NAME")
    show.add_argument("version", metavar="VERSION", type=version_number)
    show.set_defaults(func=show_version)

    download = commands.add_parser(
        "download", parents=[common], help="download a version's ONNX file",
        description="Download a version's artifact; its sha256 is verified before the file "
                    "appears under its name.")
    download.add_argument("name", metavar="NAME")
    download.add_argument("version", metavar="VERSION", type=version_number)
    download.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                          help="where to write the ONNX file")
    download.set_defaults(func=download_version)


def version_row(v: Any) -> tuple[Any, ...]:
    return (v.version, v.status, ",".join(v.aliases) or "-", LOAD_STATES[v.load.state],
            ",".join(v.tags) or "-", v.size_bytes, output.timestamp(v.create_time),
            v.description or "-")


@admin_command
def list_versions(client: AdminClient, args: argparse.Namespace) -> int:
    response = client.call("ListVersions", pb.ListVersionsRequest(
        model=args.name, status=args.status or "", tag=args.tag or "", text=args.text or ""))
    if args.json:
        output.print_json([output.to_json(v) for v in response.versions])
        return 0
    print(output.table(("VERSION", "STATUS", "ALIASES", "LOAD", "TAGS", "BYTES", "CREATED",
                        "DESCRIPTION"), [version_row(v) for v in response.versions]))
    return 0


def struct(message: Any) -> dict[str, Any]:
    return output.to_json(message)


@admin_command
def show_version(client: AdminClient, args: argparse.Namespace) -> int:
    v = client.call("GetVersion", pb.GetVersionRequest(model=args.name, version=args.version))
    if args.json:
        output.print_json(output.to_json(v))
        return 0
    print(output.fields([
        ("model", v.model),
        ("version", v.version),
        ("status", v.status),
        ("aliases", ", ".join(v.aliases) or "-"),
        ("tags", ", ".join(v.tags) or "-"),
        ("description", v.description or "-"),
        ("created", output.timestamp(v.create_time)),
        ("sha256", v.sha256),
        ("bytes", v.size_bytes),
        ("params", output.mapping(struct(v.params))),
        ("metrics", output.mapping(struct(v.metrics))),
        ("metadata", output.mapping(struct(v.metadata))),
        ("source", v.lineage.source or "-"),
        ("registered by", v.lineage.registered_by or "-"),
        ("lineage", output.mapping(struct(v.lineage.details))),
    ]))
    print()
    print(output.table(LOAD_HEADERS, load_rows([v.load])))
    return 0


@admin_command
def download_version(client: AdminClient, args: argparse.Namespace) -> int:
    target: Path = args.output
    partial = target.with_name(f".{target.name}.part")
    stream = client.call("DownloadVersion", pb.DownloadVersionRequest(
        model=args.name, version=args.version))
    info = None
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:
            for message in stream:
                if message.WhichOneof("content") == "info":
                    info = message.info
                    continue
                digest.update(message.chunk)
                size += len(message.chunk)
                out.write(message.chunk)
        if info is None:
            raise CliError("the server sent no artifact information")
        if digest.hexdigest() != info.sha256 or size != info.size_bytes:
            raise CliError(f"download corrupted: got {size} bytes hashing to "
                           f"{digest.hexdigest()}, expected {info.size_bytes} bytes with "
                           f"sha256 {info.sha256}")
        os.replace(partial, target)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        partial.unlink(missing_ok=True)
    if args.json:
        output.print_json({**output.to_json(info), "path": str(target)})
    else:
        print(f"wrote {target}: {info.model} version {info.version}, {info.size_bytes} bytes, "
              f"sha256 {info.sha256} (verified)")
    return 0
