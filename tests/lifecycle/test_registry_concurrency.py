"""Concurrent writers on one database: no collisions, no deadlocks, one consistent story.

Two ``Database`` objects on the same database stand in for two processes (or replicas):
they share no in-process lock, so only the database keeps them apart: SQLite's
``BEGIN IMMEDIATE`` and busy timeout, PostgreSQL's writers' advisory lock. Every test runs
on both.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import pytest

from lifecycle.db import Database, make_engine
from lifecycle.errors import PreconditionError
from lifecycle.registry import Registry
from tests.lifecycle.helpers import register, sha

T = TypeVar("T")
DEADLINE_S = 30.0


@pytest.fixture
def second_registry(db_url: str, db: Database) -> Iterator[Registry]:
    other = Database(make_engine(db_url))
    yield Registry(other)
    other.close()


def run_together(calls: Sequence[Callable[[], T]]) -> list[T | BaseException]:
    """Run every call on its own thread, released at once; results in call order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T | BaseException:
        barrier.wait(timeout=DEADLINE_S)
        try:
            return call()
        except Exception as err:  # collected and asserted on by the caller
            return err

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [f.result(timeout=DEADLINE_S) for f in futures]


def test_concurrent_registers_get_distinct_consecutive_numbers(
    registry: Registry, second_registry: Registry, model: str
) -> None:
    registries = [registry, second_registry]
    calls = [
        partial(register, registries[i % 2], model, f"artifact-{i}".encode()) for i in range(8)
    ]
    numbers = run_together(calls)
    assert sorted(numbers) == list(range(1, 9))  # type: ignore[type-var]
    by_sha = {v.sha256: v.version for v in registry.list_versions(model)}
    assert by_sha == {sha(f"artifact-{i}".encode()): numbers[i] for i in range(8)}


def test_concurrent_registers_of_the_same_bytes_make_one_version(
    registry: Registry, second_registry: Registry, model: str
) -> None:
    registries = [registry, second_registry]
    calls = [
        partial(
            registries[i % 2].register_version, model, sha256=sha(b"same"), size=4, actor=f"t{i}"
        )
        for i in range(8)
    ]
    results = run_together(calls)
    assert all(not isinstance(r, BaseException) for r in results), results
    assert {r[0].version for r in results} == {1}  # type: ignore[index]
    assert sum(r[1] for r in results) == 1  # type: ignore[index]
    assert len(registry.list_versions(model)) == 1


def test_concurrent_promotions_and_rollbacks_end_consistent(
    registry: Registry, second_registry: Registry, model: str
) -> None:
    versions = [register(registry, model, f"v{i}".encode()) for i in range(1, 6)]
    registry.set_alias(model, "production", 1, actor="seed")
    registries = [registry, second_registry]
    rng = random.Random(7)
    plans: list[tuple[str, int]] = [
        ("rollback", 0) if rng.random() < 0.4 else ("set", rng.choice(versions)) for _ in range(64)
    ]

    def call(index: int) -> Callable[[], object]:
        reg = registries[index % 2]
        kind, version = plans[index]
        if kind == "rollback":
            return lambda: reg.rollback(model, actor=f"t{index}")
        return lambda: reg.set_alias(model, "production", version, actor=f"t{index}")

    # 16 threads at a time, four waves.
    results: list[object] = []
    for wave in range(4):
        results += run_together([call(i) for i in range(wave * 16, wave * 16 + 16)])

    unexpected = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, PreconditionError) for r in unexpected), unexpected
    successes = len(results) - len(unexpected)

    events = list(
        reversed(
            [
                e
                for e in registry.list_events(model=model, limit=1000)
                if e.action.startswith("alias.")
            ]
        )
    )
    assert len(events) == successes + 1  # + the seed

    # Replaying the log as a stack must reproduce every recorded transition
    # (each call saw the state the previous one left) and the final alias.
    stack: list[int] = []
    for event in events:
        current = stack[-1] if stack else None
        assert event.detail["before"] == current, event
        if event.action == "alias.set":
            if event.detail["after"] != current:
                stack.append(event.detail["after"])
        else:
            stack.pop()
            assert event.detail["after"] == stack[-1], event
    assert registry.get_alias(model, "production") == stack[-1]

    # And rolling back now walks down exactly that stack.
    while len(stack) > 1:
        stack.pop()
        assert registry.rollback(model, actor="check").current == stack[-1]
    with pytest.raises(PreconditionError):
        registry.rollback(model, actor="check")
