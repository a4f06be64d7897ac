"""Fixtures of the reliability suite: live gateways (in this process, or ``gateway serve``
children) and the few helpers every scenario shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from tests.conftest import DATATYPES, write_config
from tests.support.inprocess import InProcessGateway

T = TypeVar("T")
OPERATOR_TOKEN = "ops-secret"
READER_TOKEN = "viewer-secret"
AUTH_CONFIG = f"""
[auth.tokens.ops]
token = "{OPERATOR_TOKEN}"
role = "operator"

[auth.tokens.viewer]
token = "{READER_TOKEN}"
role = "reader"
"""
OPERATOR = (("authorization", f"Bearer {OPERATOR_TOKEN}"),)
READER = (("authorization", f"Bearer {READER_TOKEN}"),)
MAX_MESSAGE_BYTES = 1 << 20
# Every model a fuzzed request may aim at. Not ``fails``: its model raises inside
# onnxruntime on purpose, which is INTERNAL by design (tests/gateway covers it).
FUZZ_MODELS = ("logreg", "two_out", "fixed", *(f"id_{dt.lower()}" for dt in DATATYPES))


def in_process(root: Path, models: dict[str, Path], extra: str = "",
               env: dict[str, str] | None = None) -> InProcessGateway:
    config = write_config(root / "gateway.toml", models, extra)
    return InProcessGateway.start_from(config, root / "data", env=env)


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory,
                 model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    """One in-process gateway serving the fuzz targets, with a 1 MiB message limit so an
    oversize request is cheap to build."""
    root = tmp_path_factory.mktemp("fuzz")
    server = in_process(root, {name: model_files[name] for name in FUZZ_MODELS},
                        f"[server]\nmax_message_bytes = {MAX_MESSAGE_BYTES}\n" + AUTH_CONFIG)
    yield server
    server.stop()


@pytest.fixture
def fuzz_channel(fuzz_gateway: InProcessGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_gateway.grpc_address) as channel:
        yield channel
