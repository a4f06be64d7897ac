"""Errors raised by the lifecycle package.

    LifecycleError
    ├── NotFoundError (LookupError)
    │   ├── ModelNotFound
    │   ├── VersionNotFound
    │   └── AliasNotFound
    ├── ConflictError                 a concurrent or duplicate write
    ├── PreconditionError             the state does not allow it (e.g. nothing to roll back to)
    ├── InvalidArgument (ValueError)  a malformed name, status, digest or value from the caller
    ├── InvalidArtifact (ValueError)  bytes that are not a usable ONNX model for this signature
    ├── ArtifactError
    │   ├── ArtifactMissing (FileNotFoundError)
    │   └── ArtifactCorrupt           sha256 mismatch
    └── StorageUnavailable (ConnectionError)  the database cannot be reached
"""

from __future__ import annotations


class LifecycleError(Exception):
    """Base of every error the lifecycle package raises."""


class NotFoundError(LifecycleError, LookupError):
    pass


class ModelNotFound(NotFoundError):
    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' not found")
        self.model = model


class VersionNotFound(NotFoundError):
    def __init__(self, model: str, version: int | str) -> None:
        super().__init__(f"version {version} of model '{model}' not found")
        self.model = model
        self.version = version


class AliasNotFound(NotFoundError):
    def __init__(self, model: str, alias: str) -> None:
        super().__init__(f"model '{model}' has no alias '{alias}'")
        self.model = model
        self.alias = alias


class ConflictError(LifecycleError):
    pass


class PreconditionError(LifecycleError):
    pass


class InvalidArgument(LifecycleError, ValueError):
    pass


class InvalidArtifact(LifecycleError, ValueError):
    pass


class ArtifactError(LifecycleError):
    pass


class ArtifactMissing(ArtifactError, FileNotFoundError):
    pass


class ArtifactCorrupt(ArtifactError):
    pass


class StorageUnavailable(LifecycleError, ConnectionError):
    pass
