"""``gateway events``: the audit trail, newest first."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf import json_format

from gateway.cli import output
from gateway.cli.client import AdminClient, admin_command
from gateway.pb import admin_pb2 as pb

CELL = 40
"""Characters of a before/after value in the table (``--json`` has them whole)."""


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "events", parents=[common], help="show the audit trail",
        description="Every change (who, what, before and after, when), newest first.")
    parser.add_argument("--model", default="", help="only events of this model")
    parser.add_argument("--action", default="",
                        help="only this action (e.g. alias.set, promote.failed)")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.set_defaults(func=list_events)


def _value(message: Any) -> Any:
    return json_format.MessageToDict(message)


@admin_command
def list_events(client: AdminClient, args: argparse.Namespace) -> int:
    response = client.call("ListEvents", pb.ListEventsRequest(
        model=args.model, action=args.action, limit=args.limit))
    if args.json:
        output.print_json([output.to_json(e) for e in response.events])
        return 0
    rows = [
        (e.id, output.timestamp(e.time), e.actor, e.action, e.model or "-",
         e.version if e.HasField("version") else None,
         f"{output.compact(_value(e.before), CELL)} -> {output.compact(_value(e.after), CELL)}",
         output.mapping(_value(e.detail), CELL))
        for e in response.events
    ]
    print(output.table(("ID", "TIME", "ACTOR", "ACTION", "MODEL", "VERSION", "CHANGE",
                        "DETAIL"), rows))
    return 0
