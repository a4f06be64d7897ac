"""Fixtures shared by every suite. Imports nothing that registers protobuf symbols, so the
tritonclient suite (tests/triton, its own pytest process) can share it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import onnx_models
from tests.support.databases import (  # noqa: F401  (fixtures, shared by every suite)
    database_url,
    deselect_unselected_backends,
    postgres_server,
)

DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselect_unselected_backends(config, items)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny real ONNX models, built once per session."""
    root = tmp_path_factory.mktemp("models")
    built = {
        "two_out": onnx_models.two_output_model(),
        "fixed": onnx_models.fixed_shape_model(),
        "fails": onnx_models.runtime_failure_model(),
        "logreg": onnx_models.logreg_like_model(),
        "logreg_b": onnx_models.logreg_like_model(seed=7),
        "mlp": onnx_models.mlp_model(),
    }
    for dt in DATATYPES:
        built[f"id_{dt.lower()}"] = onnx_models.identity_model(dt)
    paths = {}
    for name, data in built.items():
        path = root / f"{name}.onnx"
        path.write_bytes(data)
        paths[name] = path
    return paths


def write_config(path: Path, models: dict[str, Path], extra: str = "") -> Path:
    lines = [extra]
    for name, artifact in models.items():
        lines += [f"[models.{name}]", f'artifact = "{artifact}"', ""]
    path.write_text("\n".join(lines))
    return path
