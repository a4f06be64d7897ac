"""Errors of the lifecycle loop (runs, datasets, training, deployment, triggers).

    LifecycleError                         (lifecycle.errors)
    ├── NotFoundError (LookupError)
    │   ├── RunNotFound
    │   └── DatasetNotFound
    ├── ConflictError
    │   └── RunInProgress                  the model already has a queued or running run
    ├── PreconditionError
    │   └── LifecycleNotConfigured         the model has no ``[models.NAME.lifecycle]``
    ├── InvalidArgument (ValueError)
    │   └── LifecycleConfigError           a lifecycle config value is malformed; ``key``
    └── RunFailure                         why a run failed; ``step`` names the pipeline step
        ├── DatasetInvalid                 the snapshot failed validation
        ├── TrainingFailed                 the estimator raised; ``traceback`` is the child's
        │   ├── TrainingCrashed            the child died without a result (exit code)
        │   └── TrainingTimeout            the child outlived ``timeout_s`` and was killed
        ├── ParityFailed                   ONNX and scikit-learn disagree beyond tolerance
        ├── RunCancelled                   the scheduler stopped while the run worked
        └── DeployFailed                   the deployer could not roll the version out
"""

from __future__ import annotations

from lifecycle.errors import (
    ConflictError,
    InvalidArgument,
    LifecycleError,
    NotFoundError,
    PreconditionError,
)

__all__ = [
    "DatasetInvalid",
    "DatasetNotFound",
    "DeployFailed",
    "LifecycleConfigError",
    "LifecycleNotConfigured",
    "NotLeader",
    "ParityFailed",
    "RunCancelled",
    "RunFailure",
    "RunInProgress",
    "RunNotFound",
    "TrainingCrashed",
    "TrainingFailed",
    "TrainingTimeout",
]


class RunInProgress(ConflictError):
    def __init__(self, model: str, run_id: int | None = None) -> None:
        which = f" (run {run_id})" if run_id is not None else ""
        super().__init__(f"model '{model}' already has an active run{which}")
        self.model = model
        self.run_id = run_id


class LifecycleNotConfigured(PreconditionError):
    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' has no lifecycle configuration")
        self.model = model


class LifecycleConfigError(InvalidArgument):
    """``key`` is the dotted path of the offending value inside the lifecycle table."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"lifecycle.{key}: {message}")
        self.key = key


class RunFailure(LifecycleError):
    """A run stopped at ``step``; the message is the reason recorded on the run."""

    step = "run"


class DatasetInvalid(RunFailure):
    step = "snapshot"


class TrainingFailed(RunFailure):
    step = "train"

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


class TrainingCrashed(TrainingFailed):
    pass


class TrainingTimeout(TrainingFailed):
    pass


class ParityFailed(RunFailure):
    step = "convert"


class RunCancelled(RunFailure):
    pass


class DeployFailed(RunFailure):
    step = "deploy"


class NotLeader(RunFailure):
    """This replica does not (or no longer) hold the control lease: a run stops at its
    next step rather than register or promote under a stale epoch."""


class RunNotFound(NotFoundError):
    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id} not found")
        self.run_id = run_id


class DatasetNotFound(NotFoundError):
    def __init__(self, what: str) -> None:
        super().__init__(f"dataset {what} not found")
