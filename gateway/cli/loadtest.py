"""``gateway loadtest …``: run the load-test harness (``python -m loadtests``) as a
subprocess with the remaining arguments, unchanged (``--help`` included)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "loadtest", add_help=False, help="run the load-test harness (python -m loadtests)",
        description="Everything after 'loadtest' goes to python -m loadtests.")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return forward(args.args)


def forward(argv: list[str]) -> int:
    try:
        return subprocess.call([sys.executable, "-m", "loadtests", *argv])
    except KeyboardInterrupt:
        return 130
