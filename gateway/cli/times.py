"""Times on the command line: absolute ISO 8601, or relative to now (``30m``, ``12h``, ``7d``).

Everything becomes integer epoch microseconds (UTC), the request log's unit.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
HELP = ("ISO 8601 (2026-05-10, 2026-05-10T12:00:00Z; no zone means UTC), epoch seconds, or "
        "an age such as 30m, 12h, 7d (that long before now)")


def parse_time(text: str, now_us: int | None = None) -> int:
    """``text`` as epoch microseconds; ``ValueError`` naming the accepted forms."""
    value = text.strip()
    now = time.time_ns() // 1000 if now_us is None else now_us
    if value == "now":
        return now
    relative = _RELATIVE.fullmatch(value)
    if relative:
        return now - int(float(relative.group(1)) * _UNIT_S[relative.group(2)] * 1_000_000)
    try:
        return int(round(float(value) * 1_000_000))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected a time: {HELP}; got '{text}'") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def time_arg(text: str) -> int:
    """``parse_time`` for argparse (a bad value is a usage error)."""
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_us(us: int) -> str:
    """RFC 3339 in UTC with milliseconds."""
    moment = datetime.fromtimestamp(us / 1_000_000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
