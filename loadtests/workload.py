"""Workload: input signatures, payload generators and the pre-built request pool.

Payloads are generated once, before a run: a pool of N serialized ModelInferRequest
messages that the drivers cycle through, so the client spends no CPU on numpy or
protobuf while measuring. Each pool entry may carry its own request parameters and
gRPC metadata (``RequestExtras``); that is where per-request routing keys go.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from loadtests.errors import WorkloadError
from loadtests.wire import ParamValue, RawTensor, TensorInfo, encode_infer_request

# Open Inference Protocol datatype -> little-endian numpy dtype (BYTES cannot be generated).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TensorSpec:
    """A concrete input: name, V2 datatype and a fully known shape (batch included)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise WorkloadError(
                f"input {self.name!r}: datatype must be one of {', '.join(DATATYPES)}, "
                f"got {self.datatype!r}"
            )
        if not self.shape or any(d < 1 for d in self.shape):
            raise WorkloadError(
                f"input {self.name!r}: shape must be positive integers, got {list(self.shape)}"
            )

    @classmethod
    def parse(cls, text: str) -> TensorSpec:
        """Parse ``NAME:DATATYPE:D0,D1,...`` (e.g. ``input:FP32:1,20``)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise WorkloadError(
                f"--input {text!r}: expected NAME:DATATYPE:SHAPE, e.g. input:FP32:1,20"
            )
        name, datatype, shape_text = parts
        try:
            shape = tuple(int(d) for d in shape_text.split(","))
        except ValueError:
            raise WorkloadError(
                f"--input {text!r}: shape must be comma-separated integers, got {shape_text!r}"
            ) from None
        return cls(name, datatype.upper(), shape)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def specs_from_metadata(inputs: Sequence[TensorInfo], batch: int = 1) -> list[TensorSpec]:
    """Turn discovered inputs into concrete specs: a leading -1 becomes ``batch``.

    A variable dimension anywhere else cannot be guessed; raises WorkloadError asking
    for an explicit ``--input``.
    """
    specs = []
    for info in inputs:
        shape = list(info.shape)
        if shape and shape[0] < 0:
            shape[0] = batch
        if any(d < 0 for d in shape):
            raise WorkloadError(
                f"input {info.name!r} has variable dimensions {list(info.shape)} beyond the batch; "
                f"give the shape with --input {info.name}:{info.datatype}:..."
            )
        if info.datatype not in DATATYPES:
            raise WorkloadError(
                f"input {info.name!r}: cannot generate datatype {info.datatype!r}; supported: "
                f"{', '.join(DATATYPES)}"
            )
        specs.append(TensorSpec(info.name, info.datatype, tuple(shape)))
    return specs


class PayloadSource(Protocol):
    """Produces the array for one input of the ``index``-th pooled request."""

    def describe(self) -> dict[str, object]: ...

    def array(self, spec: TensorSpec, index: int) -> np.ndarray: ...


class RandomPayload:
    """Seeded random tensors: ``normal`` (mean 0, sd 1) or ``uniform`` ([0, 1)).

    Integers are drawn from [0, 100), booleans with p=0.5, whatever the distribution.
    """

    def __init__(self, distribution: str = "normal", seed: int = 0) -> None:
        if distribution not in ("normal", "uniform"):
            raise WorkloadError(
                f"payload distribution must be normal or uniform, got {distribution!r}"
            )
        self._distribution = distribution
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def describe(self) -> dict[str, object]:
        return {"kind": self._distribution, "seed": self._seed}

    def array(self, spec: TensorSpec, index: int) -> np.ndarray:
        dtype = DATATYPES[spec.datatype]
        if dtype.kind == "f":
            if self._distribution == "normal":
                return self._rng.standard_normal(spec.shape).astype(dtype)
            return self._rng.random(spec.shape).astype(dtype)
        if dtype.kind == "b":
            return self._rng.random(spec.shape) < 0.5
        return self._rng.integers(0, 100, size=spec.shape).astype(dtype)


class NpyPayload:
    """Rows from .npy files, one file per input: request i takes the next ``batch`` rows.

    Each file holds an array whose trailing dimensions match the input's shape without
    its batch dimension; rows wrap around when the file is shorter than the pool.
    """

    def __init__(self, files: Mapping[str, Path]) -> None:
        self._files = dict(files)
        self._arrays: dict[str, np.ndarray] = {}
        for name, path in self._files.items():
            try:
                self._arrays[name] = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise WorkloadError(f"--npy {path}: cannot load ({exc})") from exc

    def describe(self) -> dict[str, object]:
        return {"kind": "npy", "files": {k: str(v) for k, v in self._files.items()}}

    def array(self, spec: TensorSpec, index: int) -> np.ndarray:
        data = self._arrays.get(spec.name)
        if data is None:
            raise WorkloadError(
                f"no .npy file given for input {spec.name!r} (use --npy {spec.name}=PATH)"
            )
        rows, per_row = spec.shape[0], spec.shape[1:]
        if tuple(data.shape[1:]) != per_row or data.shape[0] == 0:
            raise WorkloadError(
                f"--npy for {spec.name!r}: array shape {list(data.shape)} does not match "
                f"[N, {', '.join(map(str, per_row))}] for input shape {list(spec.shape)}"
            )
        take = np.arange(index * rows, (index + 1) * rows) % data.shape[0]
        return data[take].astype(DATATYPES[spec.datatype])


@dataclass(frozen=True)
class RequestExtras:
    """Per-request additions: ModelInferRequest parameters and gRPC metadata headers."""

    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    metadata: Metadata = ()


@dataclass(frozen=True)
class RequestPool:
    """Serialized requests cycled by the drivers; ``metadata[i]`` goes with ``payloads[i]``.

    Picklable as is, so it travels to spawned worker processes unchanged.
    """

    payloads: tuple[bytes, ...]
    metadata: tuple[Metadata | None, ...]

    def __post_init__(self) -> None:
        if not self.payloads:
            raise WorkloadError("the request pool is empty")
        if len(self.metadata) != len(self.payloads):
            raise WorkloadError("request pool metadata and payloads differ in length")

    def __len__(self) -> int:
        return len(self.payloads)

    @property
    def request_bytes(self) -> int:
        return sum(len(p) for p in self.payloads) // len(self.payloads)


def build_pool(
    model: str,
    version: str,
    specs: Sequence[TensorSpec],
    source: PayloadSource,
    size: int,
    *,
    parameters: Mapping[str, ParamValue] | None = None,
    metadata: Metadata = (),
    per_request: Callable[[int], RequestExtras] | None = None,
) -> RequestPool:
    """Generate and serialize ``size`` requests.

    ``parameters``/``metadata`` apply to every request; ``per_request(i)`` adds (and
    overrides) parameters and appends metadata for request i, e.g. a routing key.
    """
    if size < 1:
        raise WorkloadError(f"--pool-size must be at least 1, got {size}")
    if not specs:
        raise WorkloadError("no inputs to generate")
    payloads: list[bytes] = []
    headers: list[Metadata | None] = []
    for i in range(size):
        tensors = []
        for spec in specs:
            arr = np.ascontiguousarray(source.array(spec, i))
            if tuple(arr.shape) != spec.shape:
                raise WorkloadError(
                    f"input {spec.name!r}: generated shape {arr.shape} != {spec.shape}"
                )
            tensors.append(RawTensor(spec.name, spec.datatype, spec.shape, arr.tobytes()))
        params = dict(parameters or {})
        md: Metadata = tuple(metadata)
        if per_request is not None:
            extras = per_request(i)
            params.update(extras.parameters)
            md = md + tuple(extras.metadata)
        payloads.append(encode_infer_request(model, version, tensors, params))
        headers.append(md or None)
    return RequestPool(tuple(payloads), tuple(headers))
