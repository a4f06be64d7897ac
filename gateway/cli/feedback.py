"""``gateway feedback``: send ground truth to the inference port's FeedbackService.

A LABEL is an integer class (``1``), a float value (``0.5``, ``1.0``, ``nan``) or a tensor
written as a JSON array (``[0, 1, 1]``: INT64 when every element is an integer, FP64
otherwise; ``--datatype`` chooses another). A file is CSV: ``request_id,label[,time]`` per
line, an optional header naming those columns; it is sent on one stream.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gateway.cli import output
from gateway.cli.client import CliError, FeedbackClient, feedback_command
from gateway.cli.times import HELP as TIME_HELP
from gateway.cli.times import parse_time, time_arg
from gateway.datatypes import V2_TO_NUMPY
from gateway.pb import feedback_pb2 as pb

COLUMNS = ("request_id", "label", "time")
TENSOR_TYPES = tuple(t for t in V2_TO_NUMPY if t != "BYTES")


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "feedback", parents=[common], help="send ground-truth labels for served requests",
        description="Send the label of one request (NAME REQUEST_ID LABEL) or of many "
                    "(NAME --file labels.csv) to the FeedbackService on the inference port. "
                    "A LABEL is an integer class (1), a float value (0.5, 1.0) or a tensor "
                    "as a JSON array ([0, 1, 1]: INT64 when every element is an integer, "
                    "FP64 otherwise; --datatype chooses another). The file is CSV, "
                    "request_id,label[,time] per line, with an optional header naming those "
                    "columns; it is sent on one stream.")
    parser.add_argument("name", metavar="NAME", help="the model that served the requests")
    parser.add_argument("request_id", metavar="REQUEST_ID", nargs="?",
                        help="the id of the inference (its ModelInferResponse.id)")
    parser.add_argument("label", metavar="LABEL", nargs="?",
                        help="an integer class, a float value or a JSON array (tensor)")
    parser.add_argument("--file", type=Path, metavar="CSV",
                        help="labels to send: request_id,label[,time] per line")
    parser.add_argument("--time", type=time_arg, metavar="TIME",
                        help=f"when the outcome happened (default: when received); {TIME_HELP}")
    parser.add_argument("--datatype", choices=TENSOR_TYPES,
                        help="datatype of a tensor label (default INT64 or FP64)")
    parser.set_defaults(func=send_feedback)


def parse_label(text: str, datatype: str | None = None) -> dict[str, Any]:
    """The ``label`` oneof of a ``Feedback`` for ``text``; ``ValueError`` if it is none."""
    value = text.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"a tensor label must be a JSON array: {exc}") from None
        array = np.asarray(items)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"a tensor label holds numbers, got {value!r}")
        chosen = datatype or ("INT64" if array.dtype.kind in "biu" else "FP64")
        converted = array.astype(V2_TO_NUMPY[chosen].newbyteorder("<"))
        return {"tensor": pb.Tensor(datatype=chosen, shape=converted.shape,
                                    raw_contents=converted.tobytes())}
    if datatype is not None:
        raise ValueError("--datatype applies to tensor labels (JSON arrays)")
    try:
        return {"class_label": int(value)}
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected an integer class, a float value or a JSON array, got "
                         f"{text!r}") from None
    if math.isinf(number):
        raise ValueError(f"a label must be finite, got {text!r}")
    return {"value": number}


def _feedback(model: str, request_id: str, label: str, when: int | None,
              datatype: str | None) -> pb.Feedback:
    message = pb.Feedback(model=model, request_id=request_id, **parse_label(label, datatype))
    if when is not None:
        message.event_time.FromMicroseconds(when)
    return message


def read_labels(path: Path, model: str, datatype: str | None
                ) -> tuple[list[pb.Feedback], list[int]]:
    """The messages of a CSV file and the line number of each; ``CliError`` naming the
    line of the first malformed one (nothing is sent then)."""
    messages: list[pb.Feedback] = []
    lines: list[int] = []
    columns: list[str] | None = None
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.reader(file)
            for row in reader:
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                line = reader.line_num
                if columns is None:
                    columns = list(COLUMNS)
                    if "request_id" in cells:
                        if not set(cells) <= set(COLUMNS) or "label" not in cells:
                            raise CliError(f"{path}:{line}: a header names request_id, label "
                                           f"and optionally time, got {cells}")
                        columns = cells
                        continue
                if not 2 <= len(cells) <= len(columns):
                    raise CliError(f"{path}:{line}: expected {','.join(columns)}, got "
                                   f"{len(cells)} columns")
                fields = dict(zip(columns, cells, strict=False))
                try:
                    when = parse_time(fields["time"]) if fields.get("time") else None
                    messages.append(_feedback(model, fields["request_id"], fields["label"],
                                              when, datatype))
                except ValueError as exc:
                    raise CliError(f"{path}:{line}: {exc}") from None
                lines.append(line)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    return messages, lines


@feedback_command
def send_feedback(client: FeedbackClient, args: argparse.Namespace) -> int:
    if args.file is None:
        if args.request_id is None or args.label is None:
            raise CliError("give REQUEST_ID and LABEL, or --file")
        try:
            message = _feedback(args.name, args.request_id, args.label, args.time,
                                args.datatype)
        except ValueError as exc:
            raise CliError(f"LABEL: {exc}") from None
        response = client.stub.SubmitFeedback(message, timeout=client.timeout)
        if args.json:
            output.print_json(output.to_json(response))
        else:
            print(f"accepted: {args.name} {args.request_id} (feedback {response.feedback_id})")
        return 0
    if args.request_id is not None or args.label is not None or args.time is not None:
        raise CliError("--file takes the request ids, labels and times from the file")
    messages, lines = read_labels(args.file, args.name, args.datatype)

    def stream() -> Iterator[pb.Feedback]:
        yield from messages

    summary = client.stub.StreamFeedback(stream(), timeout=client.timeout)
    if args.json:
        output.print_json(output.to_json(summary))
    else:
        print(f"accepted {summary.accepted} of {len(messages)} labels for {args.name}")
    for rejection in summary.rejections:
        line = lines[rejection.index] if rejection.index < len(lines) else "?"
        print(f"gateway: {args.file}:{line}: {rejection.request_id}: {rejection.code}: "
              f"{rejection.message}", file=sys.stderr)
    if summary.rejected > len(summary.rejections):
        print(f"gateway: ... and {summary.rejected - len(summary.rejections)} more rejected",
              file=sys.stderr)
    return 1 if summary.rejected else 0
