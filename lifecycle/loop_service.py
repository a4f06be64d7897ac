"""The lifecycle loop's facade for the admin API: runs, datasets, retrain, triggers.

Every method is a coroutine for the serving loop; the repository and scheduler calls
(blocking database work) run in ``executor``. Reads work whether or not the scheduler
runs (the history stays readable with ``[lifecycle] enabled = false``); ``retrain``
needs it.

Errors, unchanged from the stores and the scheduler: ``ModelNotFound``, ``RunNotFound``
(NOT_FOUND); ``RunInProgress`` (a ``ConflictError``); ``LifecycleNotConfigured`` and
``PreconditionError`` when the lifecycle is off (FAILED_PRECONDITION);
``LifecycleConfigError`` for a malformed trigger (INVALID_ARGUMENT, naming the key).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from lifecycle.datasets import Dataset, DatasetStore
from lifecycle.errors import InvalidArgument, PreconditionError
from lifecycle.loop_config import LifecycleConfig, TriggerSpec
from lifecycle.loop_errors import LifecycleNotConfigured
from lifecycle.registry import Registry
from lifecycle.runs import RUN_STATUSES, Run, RunStore
from lifecycle.scheduler import LifecycleScheduler
from lifecycle.triggers import TriggerStore

__all__ = ["MAX_LIST", "LoopService", "TriggerListing", "TriggerState"]

T = TypeVar("T")
MAX_LIST = 10_000
DEFAULT_LIST = 50


@dataclass(frozen=True)
class TriggerState:
    """One stored trigger and when its job fires next (None: manual, or not scheduled)."""

    spec: TriggerSpec
    next_fire: datetime | None


@dataclass(frozen=True)
class TriggerListing:
    """A model's stored triggers; ``revision`` 0 means none were ever stored (the config's
    are seeded when the scheduler starts)."""

    model: str
    triggers: tuple[TriggerState, ...]
    revision: int
    updated_at: datetime | None
    actor: str
    scheduler_running: bool


class LoopService:
    """See the module docstring. ``scheduler`` None: the lifecycle is off."""

    def __init__(
        self, *, registry: Registry, runs: RunStore, datasets: DatasetStore,
        triggers: TriggerStore, configs: Mapping[str, LifecycleConfig],
        scheduler: LifecycleScheduler | None, executor: Executor | None,
    ) -> None:
        self._registry = registry
        self._runs = runs
        self._datasets = datasets
        self._triggers = triggers
        self._configs = dict(configs)
        self._scheduler = scheduler
        self._executor = executor

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------------ runs

    async def list_runs(
        self, model: str | None = None, *, status: str | None = None, limit: int = 0,
    ) -> list[Run]:
        """Runs newest first (``limit`` 0: ``DEFAULT_LIST``), without their steps."""
        if status is not None and status not in RUN_STATUSES:
            raise InvalidArgument(f"status must be one of {', '.join(RUN_STATUSES)}, got "
                                  f"{status!r}")
        if not 0 <= limit <= MAX_LIST:
            raise InvalidArgument(f"limit must be within 0..{MAX_LIST}, got {limit}")
        if model is not None:
            await self._call(self._registry.get_model, model)
        return await self._call(self._runs.list, model, status=status,
                                limit=limit or DEFAULT_LIST)

    async def get_run(self, run_id: int) -> Run:
        """The run with its steps; ``RunNotFound``."""
        return await self._call(self._runs.get, run_id)

    async def retrain(self, model: str, *, actor: str, reason: str = "") -> Run:
        """Start a run of ``model`` now (trigger ``manual``); returns it as created."""
        await self._call(self._registry.get_model, model)
        if model not in self._configs:
            raise LifecycleNotConfigured(model)
        scheduler = self._require_scheduler()
        run_id = await self._call(scheduler.run_now, model,
                                  reason=reason or f"manual retrain by {actor}", actor=actor)
        return await self._call(self._runs.get, run_id)

    def _require_scheduler(self) -> LifecycleScheduler:
        if self._scheduler is None:
            raise PreconditionError("the lifecycle is disabled on this gateway ([lifecycle] "
                                    "enabled = false, or no model has a lifecycle table)")
        return self._scheduler

    # -------------------------------------------------------------------- datasets

    async def list_datasets(self, model: str, *, limit: int = 0) -> list[Dataset]:
        """The model's dataset versions, newest first (``limit`` 0: ``DEFAULT_LIST``)."""
        if not 0 <= limit <= MAX_LIST:
            raise InvalidArgument(f"limit must be within 0..{MAX_LIST}, got {limit}")
        await self._call(self._registry.get_model, model)
        return await self._call(self._datasets.list, model, limit=limit or DEFAULT_LIST)

    # -------------------------------------------------------------------- triggers

    async def list_triggers(self, model: str) -> TriggerListing:
        await self._call(self._registry.get_model, model)
        return await self._call(self._listing, model)

    async def set_triggers(
        self, model: str, specs: Sequence[Mapping[str, Any]], *, actor: str,
    ) -> TriggerListing:
        """Replace the model's trigger list (validated first; an empty list disables
        them) and reschedule at once. ``LifecycleNotConfigured`` for a model the
        lifecycle does not retrain."""
        parsed = [TriggerSpec.from_json(dict(spec), f"triggers.{i}")
                  for i, spec in enumerate(specs)]
        await self._call(self._registry.get_model, model)
        if model not in self._configs:
            raise LifecycleNotConfigured(model)

        def write() -> TriggerListing:
            self._triggers.set(model, parsed, actor=actor)
            if self._scheduler is not None:
                self._scheduler.sync()
            return self._listing(model)

        return await self._call(write)

    def _listing(self, model: str) -> TriggerListing:
        found = self._triggers.get(model)
        scheduler = self._scheduler
        jobs = scheduler.jobs() if scheduler is not None else []
        # Job ids are "<model>/<index>/<kind>/<digest>" (see LifecycleScheduler._desired).
        next_fire: dict[int, datetime | None] = {}
        for job in jobs:
            parts = job.id.split("/")
            if job.model == model and len(parts) == 4 and parts[1].isdigit():
                next_fire[int(parts[1])] = job.next_run_time
        specs = () if found is None else found.specs
        return TriggerListing(
            model=model,
            triggers=tuple(TriggerState(spec, next_fire.get(i)) for i, spec in enumerate(specs)),
            revision=0 if found is None else found.revision,
            updated_at=None if found is None else found.updated_at,
            actor="" if found is None else found.actor,
            scheduler_running=bool(jobs),
        )
