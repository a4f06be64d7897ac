"""``gateway register NAME FILE.onnx``: upload an ONNX file as the model's next version."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from gateway.cli import output
from gateway.cli.client import AdminClient, CliError, admin_command
from gateway.pb import admin_pb2 as pb

# Well under any sensible [server] max_message_bytes.
CHUNK_BYTES = 256 * 1024


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, value


def metric(text: str) -> tuple[str, float]:
    key, value = key_value(text)
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"metric '{key}': expected a number, got '{value}'") from None


def param(text: str) -> tuple[str, Any]:
    """``k=v`` where ``v`` is read as JSON when it is JSON (``0.1``, ``true``, ``[1,2]``)
    and as a string otherwise (``lbfgs``)."""
    key, value = key_value(text)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "register", parents=[common], help="register an ONNX file as a new version",
        description="Upload FILE as the next version of model NAME. The server checks that "
                    "it loads in onnxruntime and matches the model's signature; a new NAME "
                    "creates the model from the file's signature. The same bytes again "
                    "return the existing version.")
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("file", metavar="FILE.onnx", type=Path)
    parser.add_argument("--description", default="")
    parser.add_argument("--tag", action="append", default=[], dest="tags",
                        help="a tag (repeatable)")
    parser.add_argument("--metric", action="append", default=[], type=metric,
                        dest="metrics", metavar="KEY=NUMBER", help="a metric (repeatable)")
    parser.add_argument("--param", action="append", default=[], type=param, dest="params",
                        metavar="KEY=VALUE",
                        help="a training parameter; VALUE is JSON or a string (repeatable)")
    parser.add_argument("--source",
                        help="where the file came from (default: its absolute path)")
    parser.add_argument("--task", default="",
                        help="the model's task, when this creates the model")
    parser.set_defaults(func=register)


def _struct(pairs: list[tuple[str, Any]]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(dict(pairs))
    return message


def _requests(header: pb.RegisterVersionHeader, path: Path
              ) -> Iterator[pb.RegisterVersionRequest]:
    yield pb.RegisterVersionRequest(header=header)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield pb.RegisterVersionRequest(chunk=chunk)


@admin_command
def register(client: AdminClient, args: argparse.Namespace) -> int:
    path: Path = args.file
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    header = pb.RegisterVersionHeader(
        model=args.name, description=args.description, tags=args.tags,
        params=_struct(args.params), metrics=_struct(args.metrics),
        source=args.source if args.source is not None else str(path.resolve()),
        task=args.task, sha256=digest.hexdigest())
    response = client.call("RegisterVersion", _requests(header, path))
    if args.json:
        output.print_json(output.to_json(response))
        return 0
    v = response.version
    if response.model_created:
        print(f"created model {v.model}")
    if response.created:
        print(f"registered {v.model} version {v.version} ({v.size_bytes} bytes, "
              f"sha256 {v.sha256})")
    else:
        print(f"{v.model} version {v.version} already holds these bytes (sha256 {v.sha256}); "
              "nothing registered")
    return 0
