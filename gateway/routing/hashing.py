"""Sticky routing keys: a keyed hash that is the same in every process, replica and restart.

``blake2b(key, key=experiment_id)`` — never Python's ``hash`` (salted per process). Keying
by the experiment id makes a new experiment reshuffle the keys, and keeps the logged
``routing_key_hash`` from linking one key across experiments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidInput

__all__ = ["MAX_ROUTING_KEY", "ROUTING_KEY", "extract_routing_key", "key_digest", "unit"]

ROUTING_KEY = "routing_key"
"""The request parameter holding the routing key (gRPC metadata: ``x-routing-key``)."""
MAX_ROUTING_KEY = 256
"""The longest routing key accepted, in characters."""
_SCALE = 2.0**-53


def key_digest(routing_key: str, experiment_id: str, *, salt: bytes = b"") -> bytes:
    """The 8-byte keyed digest of ``routing_key`` within ``experiment_id`` (at most 64
    ASCII bytes; empty means no experiment). ``salt`` (<= 16 bytes) derives independent
    draws from one key, e.g. one per shadow."""
    return hashlib.blake2b(
        routing_key.encode("utf-8"), key=experiment_id.encode("ascii"), salt=salt,
        digest_size=8,
    ).digest()


def unit(digest: bytes) -> float:
    """Map a digest to [0, 1) uniformly (its top 53 bits: exact in a double, never 1.0)."""
    return (int.from_bytes(digest[:8], "big") >> 11) * _SCALE


def extract_routing_key(parameters: Mapping[str, Any], metadata: str | None = None) -> str | None:
    """The request's routing key: ``parameters["routing_key"]``, else the ``x-routing-key``
    metadata value; None when neither is given or it is empty. Raises ``InvalidInput`` for
    a non-string parameter or a key longer than ``MAX_ROUTING_KEY``."""
    value = parameters.get(ROUTING_KEY)
    if value is None:
        value = metadata
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(
            f"parameter '{ROUTING_KEY}' must be a string, got {type(value).__name__}"
        )
    if len(value) > MAX_ROUTING_KEY:
        raise InvalidInput(
            f"routing key must be at most {MAX_ROUTING_KEY} characters, got {len(value)}"
        )
    return value
