"""Validate uploaded ONNX bytes before anything is stored.

A registrable artifact parses as ONNX with a signature we can serve
(``signature_from_onnx``), matches the model's signature when the model exists
(names, datatypes, ranks), and builds an onnxruntime session. Nothing is executed
beyond session creation, and nothing is unpickled.
"""

from __future__ import annotations

import onnxruntime as ort

from lifecycle.domain import Signature
from lifecycle.errors import InvalidArtifact
from lifecycle.onnx_inspect import signature_from_onnx

__all__ = ["validate_onnx"]


def validate_onnx(data: bytes, expected: Signature | None = None) -> Signature:
    """The signature of ``data``; ``InvalidArtifact`` naming the problem otherwise.

    Blocking (parses the model and creates a session): run it in an executor.
    """
    signature = signature_from_onnx(data)
    if expected is not None:
        mismatch = expected.mismatch(signature)
        if mismatch:
            raise InvalidArtifact(f"signature does not match the model's: {mismatch}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArtifact(f"onnxruntime cannot load the model: {first}") from exc
    return signature
