"""Fixtures for the registry core: a migrated database of the test's own, on SQLite and on
PostgreSQL (``tests.support.databases``: every test using it runs on both)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from lifecycle.db import Database, make_engine, migrate
from lifecycle.domain import Signature, TensorSpec
from lifecycle.registry import Registry
from tests.lifecycle.helpers import StepClock


@pytest.fixture
def db_url(database_url: str) -> str:
    return database_url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    engine = make_engine(db_url)
    migrate(engine)
    database = Database(engine)
    yield database
    database.close()


@pytest.fixture
def clock() -> StepClock:
    return StepClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def registry(db: Database, clock: StepClock) -> Registry:
    return Registry(db, clock=clock)


@pytest.fixture
def signature() -> Signature:
    return Signature(
        inputs=(TensorSpec("features", "FP32", (-1, 4)),),
        outputs=(TensorSpec("probabilities", "FP32", (-1, 2)),),
    )


@pytest.fixture
def model(registry: Registry, signature: Signature) -> str:
    registry.create_model("fraud", signature, task="classification", actor="test")
    return "fraud"
