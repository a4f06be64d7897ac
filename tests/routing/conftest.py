"""Fixtures for the routing tests: a migrated database holding a model ``fraud`` with
versions 1..5, version 1 in production. The policy store's tests (everything using ``db``)
run on SQLite and PostgreSQL (``tests.support.databases``)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from lifecycle.db import Database, make_engine, migrate
from lifecycle.domain import PRODUCTION, Signature, TensorSpec
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry

MODEL = "fraud"
START = datetime(2026, 1, 1, tzinfo=UTC)


class StepClock:
    """A clock that advances one second per reading; thread-safe."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=1)
            return self._now


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
    return StepClock(START)


@pytest.fixture
def registry(db: Database, clock: StepClock) -> Registry:
    return Registry(db, clock=clock)


@pytest.fixture
def store(db: Database, clock: StepClock) -> PolicyStore:
    return PolicyStore(db, clock=clock)


@pytest.fixture
def model(registry: Registry) -> str:
    """``fraud`` with versions 1..5 registered and version 1 in production."""
    signature = Signature(
        inputs=(TensorSpec("features", "FP32", (-1, 4)),),
        outputs=(TensorSpec("probabilities", "FP32", (-1, 2)),),
    )
    registry.create_model(MODEL, signature, task="classification", actor="test")
    for number in range(1, 6):
        payload = f"version {number}".encode()
        registry.register_version(
            MODEL, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), actor="test"
        )
    registry.set_alias(MODEL, PRODUCTION, 1, actor="test")
    return MODEL
