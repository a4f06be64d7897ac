"""The ``gateway`` command."""

from __future__ import annotations

import argparse
import sys

from gateway.cli import (
    deploy,
    events,
    feedback,
    lifecycle_cmds,
    loadtest,
    models,
    register,
    requests,
    serve,
    traffic,
    versions,
)
from gateway.cli.client import connection_flags, inference_flags

EPILOG = """\
admin commands talk to the admin service (--target, default 127.0.0.1:8003) with the
token in --token or $GATEWAY_ADMIN_TOKEN; `feedback` talks to the inference port
(--inference-target, default 127.0.0.1:8001); add --json for machine-readable output.
Every command has --help."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="Open Inference Protocol gateway for ONNX models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = connection_flags()
    serve.add_parser(subparsers)
    models.add_parser(subparsers, common)
    versions.add_parser(subparsers, common)
    register.add_parser(subparsers, common)
    deploy.add_parsers(subparsers, common)
    events.add_parser(subparsers, common)
    requests.add_parser(subparsers, common)
    lifecycle_cmds.add_parsers(subparsers, common)
    traffic.add_parser(subparsers, common)
    feedback.add_parser(subparsers, inference_flags())
    loadtest.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # argparse would claim the harness's own flags (--help first of all).
    if argv[:1] == ["loadtest"]:
        return loadtest.forward(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
