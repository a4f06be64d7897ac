"""The control lease on both databases: one holder at a time, renewals keep it, a lapsed,
released or dead holder is replaced (epoch + 1), and the fence tells a deposed leader.

Each replica's monotonic clock is a ``Ticker`` the test advances: the lease never reads
wall time, so lapses are exact without sleeping."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from lifecycle.db import Database
from lifecycle.leases import Lease, LeaseKeeper
from lifecycle.loop_errors import NotLeader

LEASE_S = 10.0


class Ticker:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lease(db: Database, replica: str, ticker: Ticker, **kwargs: object) -> Lease:
    return Lease(db, replica=replica, lease_s=LEASE_S, monotonic=ticker, **kwargs)  # type: ignore[arg-type]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_first_replica_leads_and_a_second_one_follows(db: Database) -> None:
    t = Ticker()
    a, b = lease(db, "a", t), lease(db, "b", t)
    assert a.tick() is True
    assert a.epoch == 1 and a.check() == 1
    assert b.tick() is False and b.epoch is None
    with pytest.raises(NotLeader, match="replica b does not hold the control lease"):
        b.check()
    holder = a.read()
    assert holder is not None and (holder.holder, holder.epoch) == ("a", 1)


def test_renewals_keep_the_lease_and_a_lapsed_one_passes_with_a_new_epoch(db: Database) -> None:
    ta, tb = Ticker(), Ticker()
    a, b = lease(db, "a", ta), lease(db, "b", tb)
    a.tick()
    b.tick()
    for _ in range(8):  # 8 × 2.5 s: twice the lease, renewed all along
        ta.now += LEASE_S / 4
        tb.now += LEASE_S / 4
        assert a.tick() is True
        assert b.tick() is False
    tb.now += LEASE_S - 0.1  # a stops renewing (it died, or lost the database)
    assert b.tick() is False
    ta.now += LEASE_S
    assert a.epoch is None, "a leader that cannot renew stops leading after half the lease"
    tb.now += 0.1
    assert b.tick() is True and b.epoch == 2
    # a comes back: its renewal fails, it follows, and the fence refuses it.
    assert a.tick() is False and a.epoch is None
    with pytest.raises(NotLeader):
        a.check()
    assert b.check() == 2


def test_a_released_lease_passes_at_the_next_tick(db: Database) -> None:
    t = Ticker()
    a, b = lease(db, "a", t), lease(db, "b", t)
    a.tick()
    b.tick()
    a.release()
    assert a.epoch is None
    assert b.tick() is True and b.epoch == 2


def test_a_dead_holder_on_this_host_is_replaced_without_waiting(db: Database) -> None:
    t = Ticker()
    gone = lease(db, "gone", t, pid=dead_pid())
    assert gone.tick() is True
    restarted = lease(db, "restarted", t)
    assert restarted.tick() is True and restarted.epoch == 2


def test_a_live_holder_on_this_host_is_not_replaced_early(db: Database) -> None:
    t = Ticker()
    a, b = lease(db, "a", t), lease(db, "b", t)  # both are this very process
    a.tick()
    assert b.tick() is False


def test_followers_racing_for_a_lapsed_lease_elect_exactly_one(db: Database) -> None:
    t = Ticker()
    holder = lease(db, "holder", t)
    holder.tick()
    followers = [lease(db, f"f{i}", t) for i in range(4)]
    for f in followers:
        f.tick()
    t.now += LEASE_S
    results: list[bool] = []
    barrier = threading.Barrier(len(followers))

    def race(f: Lease) -> Callable[[], None]:
        def go() -> None:
            barrier.wait()
            results.append(f.tick())
        return go

    threads = [threading.Thread(target=race(f)) for f in followers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    winner = next(f for f in followers if f.epoch is not None)
    assert winner.check() == 2


def test_the_keeper_reports_election_and_deposition(db: Database) -> None:
    ta, tb = Ticker(), Ticker()
    events: list[str] = []
    a = LeaseKeeper(lease(db, "a", ta), on_elected=lambda e: events.append(f"a+{e}"),
                    on_deposed=lambda: events.append("a-"))
    b = LeaseKeeper(lease(db, "b", tb), on_elected=lambda e: events.append(f"b+{e}"))
    a.tick()
    b.tick()
    tb.now += LEASE_S
    ta.now += LEASE_S
    b.tick()
    a.tick()
    assert events == ["a+1", "b+2", "a-"]
