"""The background loops of online experiments, on the serving loop: the canary
controller's ticks and the bandit's reward updates. Blocking work runs in the DB executor
(the controller's and ``BanditRewarder.update``); a change is followed at once through
``ModelManager.sync_policies`` rather than at the next poll."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime

from gateway.model_manager import ModelManager
from lifecycle.canary import CanaryController
from lifecycle.errors import StorageUnavailable
from lifecycle.live_stats import BanditRewarder

__all__ = ["ExperimentLoops"]

log = logging.getLogger("gateway.experiments")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ExperimentLoops:
    def __init__(self, *, manager: ModelManager, canary: CanaryController,
                 rewarder: BanditRewarder, executor: Executor, canary_tick_s: float,
                 bandit_update_s: float, clock: Callable[[], datetime] = _utc_now,
                 leading: Callable[[], bool] = lambda: True) -> None:
        """``leading``: whether this process holds the control lease; the loops write
        the policies every replica follows, so only the leader ticks them."""
        self._manager = manager
        self._canary = canary
        self._rewarder = rewarder
        self._executor = executor
        self._canary_tick_s = canary_tick_s
        self._bandit_update_s = bandit_update_s
        self._clock = clock
        self._leading = leading

    async def tick_canaries_once(self) -> None:
        outcomes = await self._canary.tick(self._clock())
        if any(o.action not in ("hold", "lost") for o in outcomes):
            await self._manager.sync_policies()

    async def update_bandits_once(self) -> None:
        loop = asyncio.get_running_loop()
        updated = await loop.run_in_executor(self._executor, self._rewarder.update)
        if updated:
            await self._manager.sync_policies()

    async def run_canaries(self) -> None:
        """Until cancelled: one tick every ``canary_tick_s``."""
        while True:
            await asyncio.sleep(self._canary_tick_s)
            if not self._leading():
                continue
            try:
                await self.tick_canaries_once()
            except StorageUnavailable as exc:  # retried next tick: no traceback per tick
                log.warning("canary tick failed", extra={"event": "canary_tick_failed",
                                                         "reason": str(exc)})
            except Exception:
                log.exception("canary tick failed", extra={"event": "canary_tick_failed"})

    async def run_bandits(self) -> None:
        while True:
            await asyncio.sleep(self._bandit_update_s)
            if not self._leading():
                continue
            try:
                await self.update_bandits_once()
            except StorageUnavailable as exc:
                log.warning("bandit update failed", extra={"event": "bandit_update_failed",
                                                           "reason": str(exc)})
            except Exception:
                log.exception("bandit update failed", extra={"event": "bandit_update_failed"})
