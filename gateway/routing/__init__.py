"""Traffic routing: compile a model's traffic policy into an immutable routing table and
resolve each request against it (weighted split, sticky keys, pins, shadows, bandits).

Public names: ``Router``, ``RoutingTable``, ``Route``, ``Target``, ``build_table``,
``resolve``, ``extract_routing_key``, ``key_digest``, ``unit``, ``thompson_weights``,
``PRODUCTION_ARM``, ``PINNED_ARM``, ``ROUTING_KEY``.
"""

from __future__ import annotations

from gateway.routing.bandit import thompson_weights
from gateway.routing.hashing import ROUTING_KEY, extract_routing_key, key_digest, unit
from gateway.routing.router import Router
from gateway.routing.table import (
    PINNED_ARM,
    PRODUCTION_ARM,
    RandomSource,
    Route,
    RoutingTable,
    Target,
    build_table,
    resolve,
)

__all__ = [
    "PINNED_ARM",
    "PRODUCTION_ARM",
    "ROUTING_KEY",
    "RandomSource",
    "Route",
    "Router",
    "RoutingTable",
    "Target",
    "build_table",
    "extract_routing_key",
    "key_digest",
    "resolve",
    "thompson_weights",
    "unit",
]
