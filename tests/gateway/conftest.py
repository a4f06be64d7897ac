from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import write_config
from tests.support.inprocess import InProcessGateway


@pytest.fixture(scope="module")
def core_server(tmp_path_factory: pytest.TempPathFactory,
                model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    """One in-process gateway serving every tiny model, shared by a test module."""
    root = tmp_path_factory.mktemp("core")
    config = write_config(root / "gateway.toml", model_files,
                          '[server]\nmax_message_bytes = 1048576\n')
    server = InProcessGateway.start_from(config, root / "data")
    yield server
    server.stop()


@pytest.fixture
def channel(core_server: InProcessGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(core_server.grpc_address) as ch:
        yield ch
