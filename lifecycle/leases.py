"""Leases: which one of the replicas sharing a database runs a control loop.

Two leases (``CONTROL_LEASE`` for the experiment loops, ``LIFECYCLE_LEASE`` for the
lifecycle); every replica serves. One ``leases`` row per lease:
``holder`` (a replica id), ``epoch`` (incremented at every change of holder) and ``beat``
(a counter the holder increments to renew). Nothing compares wall clocks across replicas:

- the holder renews every ``lease_s / 4`` with a compare-and-set on (holder, epoch) and
  counts itself the leader only while its last renewal is younger than ``lease_s / 2``
  (a leader cut off from the database stops leading before anyone may take over);
- a follower watches (holder, epoch, beat) and takes over — a compare-and-set on exactly
  what it saw, so two followers cannot both win — once the row has not changed for
  ``lease_s`` of its own monotonic clock; at once when the holder released the lease
  (a clean stop) or is a process of this host that no longer exists (a restart after
  kill -9 need not wait out the lease).

Epochs fence the leader's work: a run records the epoch it runs under, and ``check``
(the row still names this holder and epoch) is called before a run and each of its steps,
so a deposed leader that has not noticed yet stops at its next step instead of
registering or promoting. Works the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update

from lifecycle.db import Database, lease_table, rowcount
from lifecycle.errors import ConflictError, LifecycleError
from lifecycle.loop_errors import NotLeader

__all__ = ["CONTROL_LEASE", "LIFECYCLE_LEASE", "Lease", "LeaseHolder", "LeaseKeeper",
           "pid_alive"]

log = logging.getLogger("lifecycle.leases")
CONTROL_LEASE = "control"
"""The experiment loops' lease (canary ramps, bandit rewards): every replica competes."""
LIFECYCLE_LEASE = "lifecycle"
"""The lifecycle's lease (triggers, runs, the retention purge): only replicas whose
lifecycle is on compete, so one that does not serve clients can be the one that trains."""
_L = lease_table.c


def _utc_now() -> datetime:
    return datetime.now(UTC)



def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LeaseHolder:
    """The lease row as read: ``holder`` is empty once released."""

    name: str
    holder: str
    host: str
    pid: int
    epoch: int
    beat: int
    acquired_at: datetime
    renewed_at: datetime


class Lease:
    """One replica's side of a lease; see the module docstring. ``tick`` is called from
    one thread (``LeaseKeeper``); ``leader``, ``epoch`` and ``check`` from any."""

    def __init__(
        self, db: Database, *, replica: str, lease_s: float = 10.0, name: str = CONTROL_LEASE,
        host: str | None = None, pid: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = _utc_now,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self._db = db
        self.replica = replica
        self.lease_s = lease_s
        self.name = name
        self._host = host or socket.gethostname()
        self._pid = os.getpid() if pid is None else pid
        self._monotonic = monotonic
        self._clock = clock
        self._alive = alive
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._renewed = 0.0
        self._seen: tuple[str, int, int] | None = None
        self._seen_at = 0.0

    @property
    def epoch(self) -> int | None:
        """The epoch this replica leads in, or None when it does not lead."""
        with self._lock:
            if self._epoch is None or not self._fresh():
                return None
            return self._epoch

    @property
    def leader(self) -> bool:
        return self.epoch is not None

    def _fresh(self) -> bool:
        return self._monotonic() - self._renewed < self.lease_s / 2

    def read(self) -> LeaseHolder | None:
        with self._db.read() as s:
            row = s.execute(select(lease_table).where(_L.name == self.name)).mappings().first()
        return None if row is None else LeaseHolder(**dict(row))

    def tick(self) -> bool:
        """One round: renew if leading, else watch and take over when due. Returns
        whether this replica leads afterwards. Raises ``StorageUnavailable``."""
        current = self.read()
        now = self._monotonic()
        if current is None:
            return self._create(now)
        with self._lock:
            epoch = self._epoch
        if epoch is not None and current.holder == self.replica and current.epoch == epoch:
            return self._renew(epoch, now)
        if epoch is not None:
            self._lost(f"replica {current.holder or '(none)'} holds epoch {current.epoch}")
        seen = (current.holder, current.epoch, current.beat)
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        due = (not current.holder or now - self._seen_at >= self.lease_s
               or (current.host == self._host and current.pid != self._pid
                   and not self._alive(current.pid)))
        return due and self._take_over(current, now)

    def _create(self, now: float) -> bool:
        stamp = self._clock()
        try:
            with self._db.write() as s:
                s.execute(insert(lease_table).values(
                    name=self.name, holder=self.replica, host=self._host, pid=self._pid,
                    epoch=1, beat=0, acquired_at=stamp, renewed_at=stamp))
        except ConflictError:
            return False  # another replica created it first: watch it from the next tick
        self._won(1, now)
        return True

    def _renew(self, epoch: int, now: float) -> bool:
        with self._db.write() as s:
            done = rowcount(s.execute(update(lease_table).where(
                _L.name == self.name, _L.holder == self.replica, _L.epoch == epoch,
            ).values(beat=_L.beat + 1, renewed_at=self._clock())))
        if done != 1:
            self._lost("the lease changed hands")
            return False
        with self._lock:
            self._renewed = now
        return True

    def _take_over(self, seen: LeaseHolder, now: float) -> bool:
        stamp = self._clock()
        epoch = seen.epoch + 1
        with self._db.write() as s:
            done = rowcount(s.execute(update(lease_table).where(
                _L.name == self.name, _L.holder == seen.holder, _L.epoch == seen.epoch,
                _L.beat == seen.beat,
            ).values(holder=self.replica, host=self._host, pid=self._pid, epoch=epoch, beat=0,
                     acquired_at=stamp, renewed_at=stamp)))
        if done != 1:
            return False
        self._won(epoch, now)
        log.info("lease taken over", extra={
            "event": "lease_taken_over", "lease": self.name, "epoch": epoch,
            "previous": seen.holder or "(released)", "previous_epoch": seen.epoch})
        return True

    def _won(self, epoch: int, now: float) -> None:
        with self._lock:
            self._epoch, self._renewed = epoch, now
        log.info("leading", extra={"event": "lease_acquired", "lease": self.name,
                                   "replica": self.replica, "epoch": epoch})

    def _lost(self, why: str) -> None:
        with self._lock:
            epoch, self._epoch = self._epoch, None
        log.warning("no longer leading", extra={"event": "lease_lost", "lease": self.name,
                                                "epoch": epoch, "reason": why})

    def check(self) -> int:
        """The epoch this replica leads in, confirmed against the database; ``NotLeader``
        otherwise (the fence before a run and each of its steps)."""
        epoch = self.epoch
        if epoch is None:
            raise NotLeader(f"replica {self.replica} does not hold the {self.name} lease")
        current = self.read()
        if current is None or current.holder != self.replica or current.epoch != epoch:
            holder = "nobody" if current is None else (
                f"{current.holder or '(released)'} in epoch {current.epoch}")
            raise NotLeader(f"replica {self.replica} lost the {self.name} lease (epoch "
                            f"{epoch}); it is held by {holder}")
        return epoch

    def release(self) -> None:
        """Give the lease up (a clean stop): another replica takes over at its next tick."""
        with self._lock:
            epoch, self._epoch = self._epoch, None
        if epoch is None:
            return
        with self._db.write() as s:
            s.execute(update(lease_table).where(
                _L.name == self.name, _L.holder == self.replica, _L.epoch == epoch,
            ).values(holder="", renewed_at=self._clock()))
        log.info("lease released", extra={"event": "lease_released", "lease": self.name,
                                          "epoch": epoch})


class LeaseKeeper:
    """Ticks a ``Lease`` every ``lease_s / 4`` on a thread of its own (never queued behind
    other database work) and calls ``on_elected(epoch)`` / ``on_deposed()`` when the role
    changes. Callbacks run on that thread and must not block for long."""

    def __init__(self, lease: Lease, *, on_elected: Callable[[int], None] | None = None,
                 on_deposed: Callable[[], None] | None = None) -> None:
        self.lease = lease
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._epoch: int | None = None

    def tick(self) -> None:
        """One round and its callbacks; database trouble only logs (the lease lapses by
        itself when renewals keep failing)."""
        try:
            self.lease.tick()
        except LifecycleError as exc:
            log.warning("lease not renewed", extra={"event": "lease_tick_failed",
                                                    "reason": str(exc)})
        epoch = self.lease.epoch
        if epoch == self._epoch:
            return
        previous, self._epoch = self._epoch, epoch
        try:
            if previous is not None and self._on_deposed is not None:
                self._on_deposed()
            if epoch is not None and self._on_elected is not None:
                self._on_elected(epoch)
        except Exception:
            log.exception("lease callback failed", extra={"event": "lease_callback_failed"})

    def start(self) -> None:
        """The first round now (so a lone gateway leads from its first request), then
        the thread."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = self.lease.lease_s / 4
        while not self._stop.wait(period):
            self.tick()

    def stop(self, *, release: bool = True) -> None:
        """Stop ticking and (by default) release the lease. Blocking: off the event loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if release:
            with contextlib.suppress(LifecycleError):
                self.lease.release()
