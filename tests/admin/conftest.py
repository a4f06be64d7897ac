from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests import onnx_models
from tests.admin.helpers import ENV_TOKEN, MAX_UPLOAD, OPERATOR_TOKEN, READER_TOKEN, Admin
from tests.conftest import write_config
from tests.support.inprocess import InProcessGateway

AUTH = f"""
[server]
max_upload_bytes = {MAX_UPLOAD}

[auth.tokens.ops]
token = "{OPERATOR_TOKEN}"
role = "operator"

[auth.tokens.viewer]
token = "{READER_TOKEN}"
role = "reader"
"""


@pytest.fixture(scope="session")
def fraud_onnx() -> dict[int, bytes]:
    """Four versions of a fraud model: same signature, different weights."""
    return {seed: onnx_models.logreg_like_model(seed=seed) for seed in (1, 7, 11, 13)}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    """An in-process gateway serving ``fraud`` (seeded), with operator, reader and env
    tokens; shared by a test module (tests use models of their own to stay apart)."""
    root = tmp_path_factory.mktemp("admin")
    config = write_config(root / "gateway.toml", {"fraud": model_files["logreg"]}, AUTH)
    server = InProcessGateway.start_from(config, root / "data",
                                         env={"GATEWAY_ADMIN_TOKEN": ENV_TOKEN})
    yield server
    server.stop()


@pytest.fixture
def channel(gateway: InProcessGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.admin_address) as ch:
        yield ch


@pytest.fixture
def admin(channel: grpc.Channel) -> Admin:
    return Admin(channel)


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A model name of this test's own."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:100]
