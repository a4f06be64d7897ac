"""Training in a fresh process: one ``spawn`` child per run, killed on timeout.

Why a process: ``fit`` holds the GIL for long stretches and may use every core through
BLAS/OpenMP, which would stall serving; a ``spawn`` child (fork is unsafe beside gRPC's
threads) runs at a lower priority (``nice``) with one thread for the estimator, and can
be killed without harming the gateway. ``cpu_share`` below 1 holds the child to that
share of one core by a duty cycle (running, then stopped with ``SIGSTOP`` for the rest
of each ``duty_period_s``): ``nice`` alone does not protect serving on a small machine,
where the trainer still competes for the core, its caches and the memory bus whenever
it runs. The child (``lifecycle.train_child``) gets its
data and spec as files and returns the ONNX bytes, its holdout scores and its metrics as
files; only a directory path crosses the process boundary.

Failures, all ``TrainingFailed`` with the reason recorded on the run:
``TrainingFailed`` (the estimator or converter raised; ``traceback`` is the child's),
``TrainingCrashed`` (the child died without a result: a segfault, ``os._exit``, OOM),
``TrainingTimeout`` (killed after ``timeout_s``). ``RunCancelled`` when ``cancel`` is set.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle import train_child
from lifecycle.domain import Signature
from lifecycle.loop_errors import RunCancelled, TrainingCrashed, TrainingFailed, TrainingTimeout

__all__ = ["TrainResult", "TrainSpec", "Trainer"]

_KILL_GRACE_S = 2.0
_LOG_TAIL = 8000


@dataclass(frozen=True)
class TrainSpec:
    """What to fit: a dotted estimator class path with its params, seeded; ``signature``
    is the model's serving signature the ONNX graph must have."""

    estimator: str
    params: dict[str, Any]
    seed: int
    task: str
    signature: Signature


@dataclass(frozen=True, eq=False)
class TrainResult:
    """The child's output: ONNX bytes, the estimator's own holdout scores (probabilities
    [n, k] for classification, predictions [n, 1] for regression), its classes in score
    column order, and timings (``wall_seconds`` includes the process start)."""

    onnx_bytes: bytes
    holdout_scores: np.ndarray
    classes: tuple[Any, ...]
    train_seconds: float
    wall_seconds: float
    n_train: int
    log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Runs ``TrainSpec``s in spawned children; thread-safe (each call has its own child
    and work directory under ``workdir``, or the system's temporary directory).

    ``allowed_prefixes`` limits which dotted paths the child may import; ``nice`` is the
    child's priority increment; ``cpu_share`` (0–1] the share of one core it may use,
    enforced over ``duty_period_s``; ``poll_s`` how often the wait checks timeout and
    cancel when the child is not throttled.
    """

    def __init__(
        self, *, workdir: Path | None = None,
        allowed_prefixes: Sequence[str] = ("sklearn.",), nice: int = 10,
        cpu_share: float = 1.0, duty_period_s: float = 0.1, poll_s: float = 0.1,
    ) -> None:
        if not 0.0 < cpu_share <= 1.0:
            raise ValueError(f"cpu_share must be within (0, 1], got {cpu_share!r}")
        self._workdir = workdir
        self._allowed = list(allowed_prefixes)
        self._nice = nice
        self._cpu_share = cpu_share
        self._duty_period_s = duty_period_s
        self._poll_s = poll_s
        self._context = multiprocessing.get_context("spawn")

    def train(
        self, spec: TrainSpec, X_train: np.ndarray, y_train: np.ndarray, X_holdout: np.ndarray,
        *, timeout_s: float, cancel: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> TrainResult:
        """Fit in a child and return its result; blocks until it ends (at most about
        ``timeout_s`` plus a kill grace; the timeout covers the whole child: its start,
        the fit and the conversion). ``on_wait`` is called about once per ``poll_s``
        while waiting (e.g. to refresh the run's heartbeat)."""
        if self._workdir is not None:
            self._workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="train-", dir=self._workdir) as tmp:
            root = Path(tmp)
            np.savez(root / "data.npz", X_train=X_train, y_train=y_train, X_holdout=X_holdout)
            (root / "spec.json").write_text(json.dumps({
                "estimator": spec.estimator, "params": spec.params, "seed": spec.seed,
                "task": spec.task, "signature": spec.signature.to_json(),
                "allowed_prefixes": self._allowed, "nice": self._nice}))
            started = time.monotonic()
            process = self._context.Process(target=train_child.main, args=(str(root),),
                                            name="lifecycle-train", daemon=True)
            process.start()
            try:
                self._wait(process, started + timeout_s, timeout_s, cancel, on_wait)
                exitcode = process.exitcode
            finally:
                if process.exitcode is None:
                    _kill(process)
                process.close()
            return _collect(root, time.monotonic() - started, exitcode)

    def _wait(
        self, process: Any, deadline: float, timeout_s: float,
        cancel: threading.Event | None, on_wait: Callable[[], None] | None,
    ) -> None:
        throttled = self._cpu_share < 1.0
        running_s = self._cpu_share * self._duty_period_s if throttled else self._poll_s
        stopped_s = self._duty_period_s - running_s
        while True:
            process.join(running_s)
            if process.exitcode is not None:
                return
            if throttled:
                _pause(process, stopped_s)
                if process.exitcode is not None:
                    return
            if on_wait is not None:
                on_wait()
            if cancel is not None and cancel.is_set():
                _kill(process)
                raise RunCancelled("cancelled while training: the scheduler is stopping")
            if time.monotonic() >= deadline:
                _kill(process)
                raise TrainingTimeout(
                    f"training did not finish within {timeout_s:g} s; the process was killed")


def _pause(process: Any, seconds: float) -> None:
    """Stop the child for ``seconds``, then let it run again."""
    try:
        os.kill(process.pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    try:
        process.join(seconds)
    finally:
        _resume(process)


def _resume(process: Any) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)


def _kill(process: Any) -> None:
    _resume(process)  # a stopped process would hold SIGTERM until continued
    process.terminate()
    process.join(_KILL_GRACE_S)
    if process.exitcode is None:
        process.kill()
        process.join()


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-_LOG_TAIL:]
    except FileNotFoundError:
        return ""


def _collect(root: Path, wall_seconds: float, exitcode: int | None) -> TrainResult:
    log = _tail(root / "child.log")
    error = root / "error.json"
    if error.exists():
        detail = json.loads(error.read_text())
        raise TrainingFailed(f"training raised {detail['error']}", detail["traceback"])
    result = root / "result.json"
    if not result.exists():
        raise TrainingCrashed(f"the training process died without a result "
                              f"({_exit_reason(exitcode)})", log)
    info = json.loads(result.read_text())
    with np.load(root / "scores.npz", allow_pickle=False) as scores:
        holdout_scores = scores["scores"]
    return TrainResult(
        onnx_bytes=(root / "model.onnx").read_bytes(), holdout_scores=holdout_scores,
        classes=tuple(info["classes"]), train_seconds=float(info["train_seconds"]),
        wall_seconds=wall_seconds, n_train=int(info["n_train"]), log=log,
        extra={"python": info.get("python", ""), "cpu_seconds": info.get("cpu_seconds")},
    )


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"

