"""The replicas' serving state (``lifecycle.replicas``): a store contract, on SQLite and on
PostgreSQL (``database_url``)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from lifecycle.db import Database, replica_table
from lifecycle.errors import InvalidArgument
from lifecycle.leases import Lease
from lifecycle.replicas import ModelServing, ReplicaStore, stale_after_s

START = datetime(2026, 1, 1, tzinfo=UTC)
FRAUD = ModelServing(production=2, ready=True, loaded=(1, 2), failed=(3,), policy="canary",
                     experiment="e-1", weights=((1, 0.9), (2, 0.1)))


class SetClock:
    """A wall clock the test moves by hand; thread-safe."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)

    def __call__(self) -> datetime:
        with self._lock:
            return self.now


@pytest.fixture
def wall() -> SetClock:
    return SetClock(START)


@pytest.fixture
def replicas(db: Database, wall: SetClock) -> ReplicaStore:
    return ReplicaStore(db, clock=wall)


def publish(store: ReplicaStore, replica: str, models: dict[str, ModelServing] | None = None,
            period_s: float = 2.0) -> None:
    store.publish(replica, "host-1", 4242, START, models if models is not None else {},
                  period_s=period_s)


def test_a_publication_reads_back_whole(replicas: ReplicaStore, wall: SetClock) -> None:
    wall.advance(5)
    publish(replicas, "host-1:4242", {"fraud": FRAUD, "idle": ModelServing()})
    (state,) = replicas.list()
    assert (state.id, state.host, state.pid, state.period_s) == ("host-1:4242", "host-1",
                                                                 4242, 2.0)
    assert state.started_at == START and state.updated_at == START + timedelta(seconds=5)
    assert dict(state.models) == {"fraud": FRAUD, "idle": ModelServing()}
    assert state.leader is False


def test_publishing_again_replaces_the_row(replicas: ReplicaStore, wall: SetClock) -> None:
    publish(replicas, "a", {"fraud": FRAUD})
    wall.advance(2)
    publish(replicas, "a", {"fraud": ModelServing(production=3, ready=True, loaded=(3,))})
    (state,) = replicas.list()
    assert state.updated_at == START + timedelta(seconds=2)
    assert dict(state.models) == {"fraud": ModelServing(production=3, ready=True, loaded=(3,))}


def test_replicas_are_listed_by_id_with_the_lease_holder_as_leader(
        db: Database, replicas: ReplicaStore) -> None:
    for replica in ("b", "a", "c/w1"):
        publish(replicas, replica)
    assert [(r.id, r.leader) for r in replicas.list()] == [
        ("a", False), ("b", False), ("c/w1", False)]
    lease = Lease(db, replica="b", host="host-1", pid=4242)
    assert lease.tick()
    assert [(r.id, r.leader) for r in replicas.list()] == [
        ("a", False), ("b", True), ("c/w1", False)]
    lease.release()  # a clean stop empties the holder: nobody leads until a takeover
    assert not any(r.leader for r in replicas.list())


def test_remove_forgets_one_replica(replicas: ReplicaStore) -> None:
    publish(replicas, "a")
    publish(replicas, "b")
    assert replicas.remove("a") is True
    assert replicas.remove("a") is False
    assert [r.id for r in replicas.list()] == ["b"]


def test_prune_forgets_replicas_silent_for_long(replicas: ReplicaStore,
                                                wall: SetClock) -> None:
    publish(replicas, "killed")
    wall.advance(300)
    publish(replicas, "alive")
    wall.advance(301)
    assert replicas.prune(timedelta(minutes=10)) == ("killed",)
    assert replicas.prune(timedelta(minutes=10)) == ()
    assert [r.id for r in replicas.list()] == ["alive"]
    publish(replicas, "killed")  # a replica pruned during a long pause comes back
    assert [r.id for r in replicas.list()] == ["alive", "killed"]
    with pytest.raises(InvalidArgument, match="older_than must be positive"):
        replicas.prune(timedelta(0))


def test_age_and_staleness_follow_the_publishers_period(replicas: ReplicaStore,
                                                        wall: SetClock) -> None:
    publish(replicas, "fast", period_s=1.0)
    publish(replicas, "slow", period_s=30.0)
    later = START + timedelta(seconds=stale_after_s(1.0) + 1)
    fast, slow = replicas.list()
    assert fast.age_s(later) == pytest.approx(stale_after_s(1.0) + 1)
    assert fast.stale(later) and not slow.stale(later)
    assert fast.age_s(START - timedelta(seconds=3)) == 0.0  # clocks disagreeing the other way
    seen = fast.of_model("fraud", later)
    assert seen.serving is None and seen.stale and seen.replica is fast


def test_arguments_are_checked(replicas: ReplicaStore) -> None:
    for replica_id in ("", "x" * 201):
        with pytest.raises(InvalidArgument, match="replica_id must be 1 to 200 characters"):
            publish(replicas, replica_id)
    with pytest.raises(InvalidArgument, match="pid must be an integer"):
        replicas.publish("a", "h", -1, START, {}, period_s=1)
    with pytest.raises(InvalidArgument, match="started_at must be timezone-aware"):
        replicas.publish("a", "h", 1, datetime(2026, 1, 1), {}, period_s=1)  # noqa: DTZ001
    with pytest.raises(InvalidArgument, match="period_s must be a positive number"):
        replicas.publish("a", "h", 1, START, {}, period_s=0)
    assert replicas.list() == []


def test_a_row_it_cannot_parse_is_read_leniently(db: Database,
                                                 replicas: ReplicaStore) -> None:
    """A row written by another version of the gateway never breaks ``GetModel``."""
    publish(replicas, "a", {"fraud": FRAUD})
    publish(replicas, "b")
    odd = {"period_s": "soon", "models": {
        "fraud": {"production": "2", "ready": 1, "loaded": [1, "x", True, 1],
                  "weights": [[1, 0.5], [2], "w", [3, "0.5"], [0, 1.0]], "extra": {}},
        "broken": ["not", "an", "object"]}}
    with db.write() as s:
        s.execute(update(replica_table).where(replica_table.c.id == "a").values(serving=odd))
        s.execute(update(replica_table).where(replica_table.c.id == "b").values(serving=[]))
    a, b = replicas.list()
    assert a.period_s == 0.0
    assert dict(a.models) == {"fraud": ModelServing(loaded=(1,), weights=((1, 0.5),))}
    assert (b.period_s, dict(b.models)) == (0.0, {})


def test_processes_publish_at_once_without_the_writers_lock(replicas: ReplicaStore) -> None:
    """Upserts of one's own row need no advisory lock: many at once, same row or not."""
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for round_ in range(10):
                publish(replicas, f"r{index % 3}",
                        {"fraud": ModelServing(production=round_ + 1, ready=True)})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    states = replicas.list()
    assert [r.id for r in states] == ["r0", "r1", "r2"]
    assert all(r.models["fraud"].production in range(1, 11) for r in states)
