"""The one table that turns domain errors into gRPC status codes.

Unexpected exceptions become INTERNAL with a generic message; the details are logged with
the request id.
"""

from __future__ import annotations

import logging

import grpc

from gateway import errors
from lifecycle import errors as lc

log = logging.getLogger("gateway.rpc")

STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InferenceFailed, grpc.StatusCode.INTERNAL),
    (lc.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (lc.InvalidArtifact, grpc.StatusCode.INVALID_ARGUMENT),
    (lc.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (lc.ConflictError, grpc.StatusCode.ABORTED),
    (lc.PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (lc.ArtifactError, grpc.StatusCode.FAILED_PRECONDITION),
    (lc.StorageUnavailable, grpc.StatusCode.UNAVAILABLE),
)
_CACHE: dict[type[BaseException], grpc.StatusCode | None] = {}
# Messages echo what the client sent (names, ids), and travel in the trailers, percent-
# encoded (up to 3 characters a byte): clients refuse trailers over 8 KiB (grpc's soft
# limit, at random) or 16 KiB and report RESOURCE_EXHAUSTED instead of the real status.
MAX_MESSAGE_BYTES = 2048


def _lookup(exc: BaseException) -> grpc.StatusCode | None:
    kind = type(exc)
    code = _CACHE.get(kind, ...)
    if code is ...:
        code = next((c for k, c in STATUS_TABLE if isinstance(exc, k)), None)
        _CACHE[kind] = code
    return code


def status_name(exc: BaseException) -> str:
    """The name of the status ``exc`` becomes (``INTERNAL`` when unexpected); logs nothing."""
    code = _lookup(exc)
    return "INTERNAL" if code is None else code.name


def status_for(exc: BaseException, request_id: str = "") -> tuple[grpc.StatusCode, str]:
    """The status and message of ``exc``; the message cut to ``MAX_MESSAGE_BYTES``."""
    code = _lookup(exc)
    if code is None:
        log.error("unexpected error", exc_info=exc, extra={
            "event": "internal_error", "request_id": request_id})
        return grpc.StatusCode.INTERNAL, "internal error"
    message = str(exc)
    if len(message) > MAX_MESSAGE_BYTES // 4:
        data = message.encode()
        if len(data) > MAX_MESSAGE_BYTES:
            message = (data[:MAX_MESSAGE_BYTES].decode(errors="ignore")
                       + f"... ({len(data)} bytes in all)")
    return code, message
