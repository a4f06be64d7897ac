"""Frozen domain objects the registry returns; no ORM row ever leaves storage.

Datatypes are the Open Inference Protocol names (``FP32``, ``INT64``, ``BYTES``…);
a dimension of ``-1`` is dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

VERSION_STATUSES = ("registered", "archived", "rejected")
PRODUCTION = "production"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            tuple(TensorSpec.from_json(t) for t in data["outputs"]),
        )

    def mismatch(self, other: Signature) -> str | None:
        """Why ``other`` cannot serve in place of ``self`` (names, datatypes, ranks), or None."""
        for kind, mine, theirs in (
            ("input", self.inputs, other.inputs),
            ("output", self.outputs, other.outputs),
        ):
            want = {t.name: t for t in mine}
            got = {t.name: t for t in theirs}
            if set(want) != set(got):
                return (
                    f"{kind} names differ: expected {sorted(want)}, got {sorted(got)}"
                )
            for name, spec in want.items():
                other_spec = got[name]
                if spec.datatype != other_spec.datatype:
                    return (
                        f"{kind} '{name}': expected datatype {spec.datatype}, "
                        f"got {other_spec.datatype}"
                    )
                if len(spec.shape) != len(other_spec.shape):
                    return (
                        f"{kind} '{name}': expected rank {len(spec.shape)}, "
                        f"got {len(other_spec.shape)}"
                    )
        return None


@dataclass(frozen=True)
class Model:
    name: str
    task: str
    signature: Signature
    created_at: datetime


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    status: str
    sha256: str
    size: int
    created_at: datetime
    description: str = ""
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AliasChange:
    model: str
    alias: str
    previous: int | None
    current: int


@dataclass(frozen=True)
class Event:
    id: int
    time: datetime
    actor: str
    action: str
    model: str | None
    version: int | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadRecord:
    """An explicit load requested by an operator; restored at start."""

    model: str
    version: int
