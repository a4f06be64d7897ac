"""Tells the shared database what this process serves (``lifecycle.replicas``).

Every gateway process — a replica, or a worker of ``gateway serve --workers`` — runs one
``ReplicaPublisher``: it publishes at once, then every ``period_s`` and soon after each
change (``notify``, hooked to ``ModelManager.on_change``: a swap, a load, a policy), so
``gateway models show`` on any replica lists what each one serves. It removes its row on
a clean stop (``withdraw``); every process also prunes, once a minute, the rows of
processes silent for ``prune_after_s`` (killed ones).

The snapshot is taken on the event loop (the manager's state lives there); the database
work runs in the executor passed in. Database failures are logged (once per outage), never
raised: serving does not depend on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta

from gateway.model_manager import ModelManager
from lifecycle.replicas import ModelServing, ReplicaStore

log = logging.getLogger("gateway.replicas")
__all__ = ["ReplicaPublisher", "serving_of"]

PRUNE_AFTER_S = 600.0
PRUNE_EVERY_S = 60.0


def serving_of(manager: ModelManager) -> dict[str, ModelServing]:
    """What ``manager`` serves now, per model. Call on the manager's event loop."""
    out: dict[str, ModelServing] = {}
    for served in manager.models():
        state = manager.serving_state(served.name)
        table = served.table
        # The table's policy, not the stored one: a policy that cannot be routed (a
        # version failed to load) leaves production alone serving.
        policy = table.policy if table is not None else None
        out[served.name] = ModelServing(
            production=state.production,
            ready=manager.is_ready(served.name),
            loaded=tuple(v.version for v in state.versions if v.state == "loaded"),
            failed=tuple(v.version for v in state.versions if v.state == "failed"),
            policy=policy.kind if policy is not None else "",
            experiment=policy.experiment_id if policy is not None else "",
            weights=(tuple(sorted(table.weights.items()))
                     if policy is not None and table is not None else ()),
        )
    return out


class ReplicaPublisher:
    """Publishes one process's serving state; see the module docstring. ``notify`` and the
    coroutines run on the manager's event loop."""

    def __init__(
        self, store: ReplicaStore, manager: ModelManager, *, replica_id: str, period_s: float,
        executor: Executor, host: str | None = None, pid: int | None = None,
        started_at: datetime | None = None, prune_after_s: float = PRUNE_AFTER_S,
        prune_every_s: float = PRUNE_EVERY_S, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.replica_id = replica_id
        self.period_s = period_s
        self._store = store
        self._manager = manager
        self._executor = executor
        self._host = host or socket.gethostname()
        self._pid = os.getpid() if pid is None else pid
        self._started_at = started_at or datetime.now(UTC)
        self._prune_after = timedelta(seconds=prune_after_s)
        self._prune_every_s = prune_every_s
        self._monotonic = monotonic
        self._next_prune = 0.0
        # Guards the row against a publication still running in the executor when
        # ``withdraw`` removes it (the task that started it may already be cancelled).
        self._lock = threading.Lock()
        self._withdrawn = False
        self._failing = False
        self._wake: asyncio.Event | None = None

    def notify(self, _model: str = "") -> None:
        """Publish soon: something served changed (``ModelManager.on_change``)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Publish now, then every ``period_s`` or on ``notify``, until cancelled."""
        self._wake = asyncio.Event()
        while True:
            # Cleared before the snapshot: a change during the write publishes again.
            self._wake.clear()
            await self.publish_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.period_s)

    async def publish_once(self) -> bool:
        """Publish the current state (and prune when due); False when it failed or the
        publisher was withdrawn."""
        serving = serving_of(self._manager)
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(self._executor, self._write, serving)
        except Exception as exc:  # noqa: BLE001 - serving goes on; the next round retries
            if not self._failing:
                log.warning("replica state not published", extra={
                    "event": "replica_publish_failed", "replica": self.replica_id,
                    "reason": f"{type(exc).__name__}: {exc}"})
            self._failing = True
            return False
        if self._failing and done:
            log.info("replica state published again", extra={
                "event": "replica_publish_recovered", "replica": self.replica_id})
            self._failing = False
        return done

    def _write(self, serving: dict[str, ModelServing]) -> bool:
        with self._lock:
            if self._withdrawn:
                return False
            self._store.publish(self.replica_id, self._host, self._pid, self._started_at,
                                serving, period_s=self.period_s)
            now = self._monotonic()
            if now >= self._next_prune:
                self._next_prune = now + self._prune_every_s
                gone = self._store.prune(self._prune_after)
                if gone:
                    log.info("silent replicas forgotten", extra={
                        "event": "replicas_pruned", "replicas": list(gone),
                        "silent_s": self._prune_after.total_seconds()})
            return True

    async def withdraw(self) -> None:
        """Remove this process's row (a clean stop) and publish no more. Call before the
        executor shuts down; a failure is logged (the row is pruned later)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._remove)
        except Exception as exc:  # noqa: BLE001 - stopping goes on
            log.warning("replica state not withdrawn", extra={
                "event": "replica_withdraw_failed", "replica": self.replica_id,
                "reason": f"{type(exc).__name__}: {exc}"})

    def _remove(self) -> None:
        with self._lock:
            self._withdrawn = True
            self._store.remove(self.replica_id)
