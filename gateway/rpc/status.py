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
    code = _lookup(exc)
    if code is None:
        log.error("unexpected error", exc_info=exc, extra={
            "event": "internal_error", "request_id": request_id})
        return grpc.StatusCode.INTERNAL, "internal error"
    return code, str(exc)
