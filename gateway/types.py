"""Protocol-neutral request and response types of the serving core (no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class InferInput:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(slots=True)
class InferRequest:
    model: str
    inputs: list[InferInput]
    version: str = ""
    id: str = ""
    requested_outputs: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    """Absolute ``time.monotonic()`` deadline from the client, or None."""


@dataclass(slots=True)
class InferOutput:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[InferOutput]
    routing_arm: str = ""
    experiment_id: str = ""
    """Returned as ``response.parameters`` (strings) by the gRPC layer."""
