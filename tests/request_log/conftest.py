"""Fixtures for the request log: a migrated database of the test's own (SQLite and
PostgreSQL: every test using it runs on both, see ``tests.support.databases``), a store over
it whose lock waits are short (so a locked database fails fast and deterministically),
and a factory of started engines that are stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import event

from gateway.request_log import RequestLog, RequestLogConfig, RequestRecord, Tensor
from lifecycle.db import Database, make_engine, migrate
from lifecycle.request_store import RequestStore

BUSY_TIMEOUT_MS = 20


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def short_busy_engine(url: str) -> Any:
    engine = make_engine(url)
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _short_busy(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    return engine


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    engine = short_busy_engine(database_url)
    migrate(engine)
    # SQLite: the in-process writer queue may wait; the busy timeout above is what fails
    # a locked database. PostgreSQL: this bounds every lock wait of a write.
    lock_timeout_s = 5.0 if engine.dialect.name == "sqlite" else BUSY_TIMEOUT_MS / 1000
    database = Database(engine, lock_timeout_s=lock_timeout_s)
    yield database
    database.close()


@pytest.fixture
def store(db: Database) -> RequestStore:
    return RequestStore(db)


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "request-log"


@pytest.fixture
def make_log(
    store: RequestStore, journal_dir: Path
) -> Iterator[Callable[..., tuple[RequestLog, CollectorRegistry]]]:
    """``make_log(**config)`` → a started engine on ``store`` and its metrics registry."""
    started: list[RequestLog] = []

    def make(**overrides: Any) -> tuple[RequestLog, CollectorRegistry]:
        registry = CollectorRegistry()
        options: dict[str, Any] = {"journal_dir": journal_dir, "retry_initial_s": 0.01,
                                   "retry_max_s": 0.05}
        options.update(overrides)
        policy = options.pop("default_policy", None)
        request_log = RequestLog(RequestLogConfig(**options), store, registry,
                                 default_policy=policy)
        request_log.start()
        started.append(request_log)
        return request_log, registry

    yield make
    for request_log in started:
        request_log.stop(5.0)


def fp32(name: str, *values: float) -> Tensor:
    return Tensor.from_array(name, "FP32", np.array([values], dtype=np.float32))


def record(model: str = "m", request_id: str = "", *, version: int = 1, shadow: bool = False,
           features: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0),
           scores: tuple[float, ...] = (0.25, 0.75)) -> RequestRecord:
    return RequestRecord(
        model=model, version=version, request_id=request_id,
        inputs=[fp32("features", *features)], outputs=[fp32("scores", *scores)],
        latency_us=120, shadow=shadow,
    )
