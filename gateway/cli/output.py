"""How the CLI prints: aligned tables for people, JSON of the API objects for scripts.

JSON uses the proto field names; 64-bit integers (version numbers, sizes) are JSON
integers rather than the strings protobuf's JSON mapping makes of them; timestamps are
RFC 3339 strings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_INT64 = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                    FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                    FieldDescriptor.TYPE_SFIXED64})
# Their JSON mapping is already what we want (objects, values, RFC 3339 strings).
_OPAQUE = frozenset({"google.protobuf.Struct", "google.protobuf.Value",
                     "google.protobuf.ListValue", "google.protobuf.Timestamp"})


def to_json(message: Message) -> dict[str, Any]:
    """``message`` as a JSON object: every field (defaults included), proto names."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    return _integers(message.DESCRIPTOR, data)  # type: ignore[no-any-return]


def _integers(descriptor: Descriptor, data: Any) -> Any:
    if descriptor.full_name in _OPAQUE:
        return whole(data)
    if not isinstance(data, dict):
        return data
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            value_field = message_type.fields_by_name["value"]
            data[field.name] = {k: _convert(value_field, v) for k, v in value.items()}
        elif isinstance(value, list):
            data[field.name] = [_convert(field, v) for v in value]
        else:
            data[field.name] = _convert(field, value)
    return data


def _convert(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64:
        return int(value)
    if field.message_type is not None:
        return _integers(field.message_type, value)
    return value


def whole(value: Any) -> Any:
    """``value`` with integral floats as ints, recursively: a ``Struct`` holds every number
    as a double, but the numbers in our metadata and events are mostly counts and
    version numbers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole(v) for v in value]
    return value


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """``key: value`` lines with the values aligned."""
    items = [(k, _cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {v}".rstrip() for k, v in items)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def timestamp(ts: Any) -> str:
    """A protobuf Timestamp as RFC 3339 in UTC, to the second; ``-`` when unset."""
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compact(value: Any, limit: int = 0) -> str:
    """A JSON value in one line (``-`` for null), cut to ``limit`` characters if given."""
    if value is None:
        return "-"
    value = whole(value)
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if not limit or len(text) <= limit else text[:limit - 1] + "…"


def mapping(values: dict[str, Any], limit: int = 0) -> str:
    """``k=v, k=v`` sorted by key; ``-`` when empty; values cut as in ``compact``."""
    if not values:
        return "-"
    return ", ".join(f"{k}={compact(v, limit)}" for k, v in sorted(values.items()))
