"""Errors of the serving path. The gRPC layer maps each class to a status in one table
(``gateway.rpc.status``); messages name the field, the expectation and what was received.

    GatewayError
    ├── InvalidInput (ValueError)             INVALID_ARGUMENT
    ├── NotFound (LookupError)                NOT_FOUND
    │   ├── ModelNotFound
    │   └── VersionNotFound
    ├── NotReady                              UNAVAILABLE (known but not loaded / warming)
    ├── Overloaded                            RESOURCE_EXHAUSTED
    ├── DeadlineExceeded (TimeoutError)       DEADLINE_EXCEEDED
    ├── Unauthenticated                       UNAUTHENTICATED
    ├── PermissionDenied (PermissionError)    PERMISSION_DENIED
    ├── FailedPrecondition                    FAILED_PRECONDITION
    ├── ShuttingDown                          UNAVAILABLE
    ├── Unavailable                           UNAVAILABLE (cannot take it now, e.g. the
    │                                         request log's queue is full: retry)
    ├── ModelLoadError                        a version failed to load or warm up
    └── InferenceFailed                       INTERNAL (generic message; details logged)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the serving path raises on purpose."""


class InvalidInput(GatewayError, ValueError):
    pass


class NotFound(GatewayError, LookupError):
    pass


class ModelNotFound(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' not found")


class VersionNotFound(NotFound):
    def __init__(self, model: str, version: str) -> None:
        super().__init__(f"version '{version}' of model '{model}' is not served")


class NotReady(GatewayError):
    pass


class Overloaded(GatewayError):
    pass


class DeadlineExceeded(GatewayError, TimeoutError):
    pass


class Unauthenticated(GatewayError):
    pass


class PermissionDenied(GatewayError, PermissionError):
    pass


class FailedPrecondition(GatewayError):
    pass


class ShuttingDown(GatewayError):
    pass


class Unavailable(GatewayError):
    pass


class ModelLoadError(GatewayError):
    pass


class InferenceFailed(GatewayError):
    """The model raised while running; the message stays generic for the client."""
