"""The child side of a training run: fit, score the holdout, convert to ONNX.

Runs as the target of a ``spawn`` process started by ``lifecycle.training.Trainer``. It
talks to the parent only through files in its work directory — nothing is pickled:

    in:  spec.json  (estimator path, params, seed, task, signature, allowed prefixes, nice)
         data.npz   (X_train, y_train, X_holdout)
    out: model.onnx, scores.npz (the estimator's holdout scores), result.json
         or error.json (message and traceback) when the estimator or converter raised
         child.log (its stdout and stderr)

Nothing heavy is imported at module level: the thread limits below must be in the
environment before numpy and the BLAS/OpenMP runtimes load.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["build_estimator", "main"]

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
_TREE_MODULES = ("sklearn.tree", "sklearn.ensemble")


def main(workdir: str) -> None:
    """Entry point of the spawned process; exits 0 with a result, 1 with an error."""
    for name in _THREAD_VARS:
        os.environ[name] = "1"
    root = Path(workdir)
    log = open(root / "child.log", "w", buffering=1)  # noqa: SIM115 - lives as long as we do
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    spec = json.loads((root / "spec.json").read_text())
    _watch_parent(os.getppid())
    # A lower priority is a courtesy to serving, not a requirement.
    with contextlib.suppress(OSError):
        os.nice(int(spec.get("nice", 10)))
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            _train(root, spec)
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        _write_json(root / "error.json", {
            "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        log.flush()
        os._exit(1)
    log.flush()
    os._exit(0)


def _watch_parent(parent: int) -> None:
    """Exit when the parent dies: an orphaned trainer must not keep burning a core."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def build_estimator(
    path: str, params: dict[str, Any], seed: int, allowed_prefixes: list[str]
) -> Any:
    """``Pipeline([StandardScaler,] estimator(**params))`` from a dotted class path.

    Only paths under ``allowed_prefixes`` import, so a stored path cannot load arbitrary
    code. ``random_state`` is set to ``seed`` when the estimator takes one and the
    params do not. Tree models get no scaler (see ``lifecycle.bootstrap.build_pipeline``).
    """
    import importlib
    import inspect

    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if not any(path.startswith(prefix) for prefix in allowed_prefixes):
        raise ValueError(f"estimator '{path}' is outside the allowed prefixes {allowed_prefixes}")
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    params = dict(params)
    if "random_state" in inspect.signature(cls).parameters and "random_state" not in params:
        params["random_state"] = seed
    steps: list[tuple[str, Any]] = [("clf", cls(**params))]
    if not module_name.startswith(_TREE_MODULES):
        steps.insert(0, ("scale", StandardScaler()))
    return Pipeline(steps)


def _train(root: Path, spec: dict[str, Any]) -> None:
    import numpy as np

    with np.load(root / "data.npz", allow_pickle=False) as data:
        X_train, y_train, X_holdout = data["X_train"], data["y_train"], data["X_holdout"]
    model = build_estimator(spec["estimator"], spec["params"], int(spec["seed"]),
                            list(spec["allowed_prefixes"]))
    started = time.monotonic()
    model.fit(X_train, y_train)
    train_seconds = time.monotonic() - started
    classification = spec["task"] == "classification"
    if classification:
        scores = model.predict_proba(X_holdout)
        classes = [c.item() for c in model.classes_]
    else:
        scores = model.predict(X_holdout).reshape(len(X_holdout), -1)
        classes = []
    onnx_bytes = _convert(model, spec["signature"], classification)
    (root / "model.onnx").write_bytes(onnx_bytes)
    np.savez(root / "scores.npz", scores=np.asarray(scores, dtype=np.float64))
    _write_json(root / "result.json", {
        "train_seconds": train_seconds, "classes": classes, "n_train": int(len(y_train)),
        "python": sys.version.split()[0], "cpu_seconds": time.process_time()})


_TYPES = {"FP32": "FloatTensorType", "FP64": "DoubleTensorType", "INT64": "Int64TensorType",
          "INT32": "Int32TensorType", "BOOL": "BooleanTensorType", "BYTES": "StringTensorType"}


def _tensor_type(spec: dict[str, Any]) -> Any:
    from skl2onnx.common import data_types

    name = _TYPES.get(spec["datatype"])
    if name is None:
        raise ValueError(f"tensor '{spec['name']}': skl2onnx has no type for "
                         f"{spec['datatype']}")
    dims = [None if d < 0 else int(d) for d in spec["shape"]]
    return getattr(data_types, name)(dims)


def _convert(model: Any, signature: dict[str, Any], classification: bool) -> bytes:
    """skl2onnx with the model's serving signature: its input and output names, types and
    shapes (probabilities as a plain tensor, no ZipMap)."""
    from skl2onnx import to_onnx

    from lifecycle.bootstrap import TARGET_OPSET

    (source,) = signature["inputs"]
    options = {id(model): {"zipmap": False}} if classification else None
    onx = to_onnx(
        model,
        initial_types=[(source["name"], _tensor_type(source))],
        final_types=[(o["name"], _tensor_type(o)) for o in signature["outputs"]],
        options=options,
        target_opset=TARGET_OPSET,
    )
    return bytes(onx.SerializeToString())
