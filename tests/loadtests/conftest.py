"""Fixtures of the harness's tests: the V2 server double (see ``v2double``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.loadtests.v2double import Behaviour, FakeV2Server


@pytest.fixture
def v2_server() -> Iterator[Callable[..., FakeV2Server]]:
    """Factory: ``v2_server(Behaviour(...))`` starts a double; all are stopped after the test."""
    servers: list[FakeV2Server] = []

    def make(behaviour: Behaviour | None = None) -> FakeV2Server:
        server = FakeV2Server(behaviour).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
