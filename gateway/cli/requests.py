"""``gateway requests list|export|unmatched|purge``: read and prune the request log.

``export`` streams a model's labelled, non-shadow records over the admin API's
``QueryRequests`` and builds the training set with ``lifecycle.request_export`` — the very
code the lifecycle trains from — so the file is the exact dataset a training run would see.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from gateway.cli import output
from gateway.cli.client import AdminClient, CliError, admin_command
from gateway.cli.times import HELP as TIME_HELP
from gateway.cli.times import format_us, time_arg
from gateway.cli.versions import version_number
from gateway.pb import admin_pb2 as pb
from gateway.rpc.request_log_converters import from_logged_request, label_of, timestamp_us
from lifecycle.request_export import TrainingSet, training_set_from, write_csv, write_npz
from lifecycle.request_records import Label, Tensor

FORMATS = ("csv", "npz")
CELL = 40


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "requests", help="list, export and purge the request log",
        description="The request log: every inference with its tensors and the label "
                    "feedback gave it.")
    commands = parser.add_subparsers(dest="requests_command", required=True,
                                     metavar="COMMAND")

    listing = commands.add_parser(
        "list", parents=[common], help="list a model's logged requests",
        description="A model's logged requests in time order, with their labels.")
    listing.add_argument("name", metavar="NAME")
    _filters(listing)
    labelled = listing.add_mutually_exclusive_group()
    labelled.add_argument("--labelled", dest="has_feedback", action="store_const", const=True,
                          help="only requests with a label")
    labelled.add_argument("--unlabelled", dest="has_feedback", action="store_const",
                          const=False, help="only requests without a label")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.set_defaults(func=list_requests)

    export = commands.add_parser(
        "export", parents=[common], help="export labelled traffic as a training set",
        description="Export a model's labelled traffic (features, predictions, labels, "
                    "version, time per row) as the training set the lifecycle would use: "
                    "npz arrays features, predictions, labels, record_ids, request_ids, "
                    "versions, timestamps_us; or csv, one line per row.")
    export.add_argument("name", metavar="NAME")
    _filters(export)
    export.add_argument("--format", choices=FORMATS,
                        help="default: from the --output suffix, else csv")
    export.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="where to write (default: standard output)")
    export.add_argument("--input-name", help="the input tensor that holds the features "
                        "(needed when the model has several)")
    export.add_argument("--output-name", help="the output tensor that holds the predictions "
                        "(default: the first)")
    export.set_defaults(func=export_requests)

    unmatched = commands.add_parser(
        "unmatched", parents=[common], help="list feedback that matched no request",
        description="Feedback whose request id matched no logged request of the model "
                    "within the join window, oldest first.")
    unmatched.add_argument("name", metavar="NAME")
    unmatched.add_argument("--limit", type=int, default=0, help="at most this many "
                           "(default 1000)")
    unmatched.set_defaults(func=list_unmatched)

    purge = commands.add_parser(
        "purge", parents=[common], help="delete old records (retention)",
        description="Delete a model's records logged before the cutoff and its feedback "
                    "received before it, then its unmatched feedback past the join window. "
                    "Without a cutoff, the model's retention (retention_days) applies.")
    purge.add_argument("name", metavar="NAME")
    cutoff = purge.add_mutually_exclusive_group()
    cutoff.add_argument("--before", type=time_arg, metavar="TIME", help=TIME_HELP)
    cutoff.add_argument("--older-than-days", type=float, metavar="N",
                        help="records logged more than N days ago")
    purge.set_defaults(func=purge_requests)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=time_arg, metavar="TIME",
                        help=f"logged at or after (default: the first); {TIME_HELP}")
    parser.add_argument("--until", type=time_arg, metavar="TIME",
                        help="logged before (default: now)")
    parser.add_argument("--version", type=version_number, help="only this version")


def _query(args: argparse.Namespace, **fields: Any) -> pb.QueryRequestsRequest:
    request = pb.QueryRequestsRequest(model=args.name, **fields)
    if args.version is not None:
        request.version = args.version
    if args.since is not None:
        request.since.FromMicroseconds(args.since)
    if args.until is not None:
        request.until.FromMicroseconds(args.until)
    return request


def label_text(label: Label) -> str:
    if isinstance(label.value, Tensor):
        value = label.value.to_numpy()
        return output.compact(value.tolist() if value.dtype != object else str(value), CELL)
    return str(label.value)


@admin_command
def list_requests(client: AdminClient, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    request = _query(args, limit=args.limit, omit_payload=not args.json)
    if args.has_feedback is not None:
        request.has_feedback = args.has_feedback
    records = list(client.call("QueryRequests", request))
    if args.json:
        output.print_json([output.to_json(r) for r in records])
        return 0
    rows = []
    for r in records:
        label = label_text(label_of(r.feedback.label)) if r.HasField("feedback") else None
        rows.append((format_us(timestamp_us(r.time)), r.version, r.status, r.latency_us,
                     r.request_id or "-", label, r.record_id))
    print(output.table(("TIME", "VERSION", "STATUS", "LATENCY_US", "REQUEST_ID", "LABEL",
                        "RECORD"), rows))
    return 0


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    if args.output is not None and args.output.suffix.lower() == ".npz":
        return "npz"
    return "csv"


@admin_command
def export_requests(client: AdminClient, args: argparse.Namespace) -> int:
    request = _query(args, has_feedback=True, exclude_shadow=True)
    records = (from_logged_request(m) for m in client.stream("QueryRequests", request))
    try:
        training_set = training_set_from(args.name, records, input_name=args.input_name,
                                         output_name=args.output_name)
    except ValueError as exc:  # InvalidArgument (ambiguous input), InvalidInput (corrupt)
        raise CliError(str(exc)) from None
    _write(training_set, _format(args), args.output)
    if training_set.skipped:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(training_set.skipped_reasons.items()))
        print(f"gateway: warning: {training_set.skipped} labelled records left out ({reasons})",
              file=sys.stderr)
    if args.output is not None:
        if args.json:
            output.print_json({"path": str(args.output), "rows": len(training_set),
                               "skipped": training_set.skipped_reasons})
        else:
            print(f"wrote {args.output}: {len(training_set)} rows of {args.name}")
    return 0


def _write(training_set: TrainingSet, fmt: str, path: Path | None) -> None:
    try:
        if fmt == "npz":
            buffer = io.BytesIO()
            write_npz(training_set, buffer)
            if path is None:
                sys.stdout.buffer.write(buffer.getvalue())
                sys.stdout.buffer.flush()
            else:
                path.write_bytes(buffer.getvalue())
        elif path is None:
            write_csv(training_set, sys.stdout)
        else:
            with path.open("w", newline="", encoding="utf-8") as file:
                write_csv(training_set, file)
    except OSError as exc:
        raise CliError(f"cannot write {path or 'standard output'}: {exc.strerror}") from exc


@admin_command
def list_unmatched(client: AdminClient, args: argparse.Namespace) -> int:
    response = client.call("ListUnmatchedFeedback", pb.ListUnmatchedFeedbackRequest(
        model=args.name, limit=args.limit))
    if args.json:
        output.print_json([output.to_json(f) for f in response.feedback])
        return 0
    rows = [(format_us(timestamp_us(f.receive_time)), f.request_id,
             label_text(label_of(f.label)), f.feedback_id) for f in response.feedback]
    print(output.table(("RECEIVED", "REQUEST_ID", "LABEL", "FEEDBACK"), rows))
    return 0


@admin_command
def purge_requests(client: AdminClient, args: argparse.Namespace) -> int:
    request = pb.PurgeRequestsRequest(model=args.name)
    if args.before is not None:
        request.before.FromMicroseconds(args.before)
    elif args.older_than_days is not None:
        request.older_than_days = args.older_than_days
    response = client.call("PurgeRequests", request)
    if args.json:
        output.print_json(output.to_json(response))
        return 0
    print(f"purged {args.name} before {format_us(timestamp_us(response.before))}: "
          f"{response.requests} requests, {response.feedback} feedback, "
          f"{response.unmatched_feedback} unmatched feedback")
    return 0
