"""The lifecycle loop inside the gateway: the app-side composition of ``lifecycle/``.

``build_lifecycle`` wires the stores (runs, datasets as ``.npz`` artifacts, triggers),
the trigger checker, the retrainer (spawned training children), the rollout (promotions
and canary starts run on the serving loop through a ``LoopBridge``; the model manager is
the deployer) and the scheduler. A ``canary`` deploy starts a ramp on the app's canary controller,
which the app ticks. ``LifecycleRuntime.service`` is the admin API's facade; it works
(read-only history) even when the loop is off.

Threads: ``start`` and ``stop`` block (database work, thread joins) and must run in an
executor, never on the serving loop — a run may be waiting on that loop for a promotion
before it can notice the cancel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.request_log.build import DAY_S
from gateway.settings import Settings
from lifecycle.artifacts import ArtifactStore
from lifecycle.canary import CanaryController
from lifecycle.datasets import DatasetStore
from lifecycle.db import Database
from lifecycle.deployer import Deployer
from lifecycle.errors import LifecycleError
from lifecycle.leases import Lease
from lifecycle.loop_config import LifecycleConfig
from lifecycle.loop_service import LoopService
from lifecycle.pipeline import Retrainer
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.request_store import RequestStore
from lifecycle.rollout import LoopBridge, RequestLogAgreement, Rollout
from lifecycle.runs import RunStore
from lifecycle.scheduler import LifecycleScheduler
from lifecycle.training import Trainer
from lifecycle.triggers import TriggerChecker, TriggerStore, register_bootstrap_dataset

__all__ = ["DATASET_SUFFIX", "LifecycleRuntime", "build_lifecycle"]

log = logging.getLogger("gateway.lifecycle")
DATASET_SUFFIX = ".npz"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class LifecycleRuntime:
    """What the app holds of the loop. ``scheduler`` is None when the loop is off
    (``[lifecycle] enabled``)."""

    service: LoopService
    configs: Mapping[str, LifecycleConfig]
    registry: Registry
    datasets: DatasetStore
    scheduler: LifecycleScheduler | None = None

    @property
    def enabled(self) -> bool:
        return self.scheduler is not None

    def start(self) -> None:
        """Give each bootstrapped champion its training data as a dataset (the drift
        reference), then start the scheduler. Blocking: call it in an executor."""
        if self.scheduler is None:
            return
        # Its INFO lines (every job added, every execution) would drown the gateway's log.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        for model in self.configs:
            try:
                dataset = register_bootstrap_dataset(self.registry, self.datasets, model)
            except (LifecycleError, ValueError) as exc:
                log.warning("bootstrap dataset not registered", extra={
                    "event": "bootstrap_dataset_failed", "model": model, "reason": str(exc)})
                continue
            if dataset is not None:
                log.info("bootstrap dataset registered", extra={
                    "event": "bootstrap_dataset", "model": model, "dataset": dataset.id,
                    "rows": dataset.rows})
        self.scheduler.start()
        log.info("lifecycle started", extra={"event": "lifecycle_started",
                                             "models": sorted(self.configs)})

    def stop(self) -> None:
        """Stop firing, cancel active runs and wait for them. Blocking: in an executor."""
        if self.scheduler is not None:
            self.scheduler.stop()


def build_lifecycle(
    settings: Settings, *, database: Database, registry: Registry, artifacts: ArtifactStore,
    requests: RequestStore, policies: PolicyStore, deployer: Deployer,
    canary: CanaryController, loop: asyncio.AbstractEventLoop, executor: Executor,
    lease: Lease | None = None,
) -> LifecycleRuntime:
    """Compose the loop from the app's parts (see the module docstring): ``deployer`` is
    the model manager, ``canary`` the app's (ticked) canary controller, ``loop`` the
    serving loop, ``executor`` where the facade's database calls run, ``lease`` the
    control lease among replicas (runs execute only on its holder, fenced by it)."""
    loop_settings = settings.lifecycle
    configs = {m.name: m.lifecycle for m in settings.models if m.lifecycle is not None}
    runs = RunStore(database)
    datasets = DatasetStore(database, ArtifactStore(artifacts.root, suffix=DATASET_SUFFIX))
    triggers = TriggerStore(database)
    if not settings.lifecycle_enabled:
        service = LoopService(registry=registry, runs=runs, datasets=datasets,
                              triggers=triggers, configs=configs, scheduler=None,
                              executor=executor)
        return LifecycleRuntime(service, configs, registry, datasets)
    rollout = Rollout(registry, deployer=deployer, bridge=LoopBridge(loop), canary=canary,
                      policies=policies, agreement=RequestLogAgreement(requests),
                      clock=_utc_now, actor="lifecycle",
                      promote_timeout_s=loop_settings.promote_timeout_s)
    trainer = Trainer(workdir=loop_settings.workdir or settings.data_dir / "training",
                      allowed_prefixes=loop_settings.allowed_estimators,
                      nice=loop_settings.nice, cpu_share=loop_settings.train_cpu_share)
    retrainer = Retrainer(registry=registry, artifacts=artifacts, datasets=datasets,
                          runs=runs, requests=requests, trainer=trainer, rollout=rollout,
                          clock=_utc_now, fence=None if lease is None else lease.check)
    checker = TriggerChecker(registry=registry, requests=requests, runs=runs,
                             datasets=datasets, clock=_utc_now)
    retention = {}
    if settings.request_log.enabled:
        retention = {m.name: settings.logging_of(m.name).retention_days * DAY_S
                     for m in settings.models}
    scheduler = LifecycleScheduler(
        retrainer=retrainer, runs=runs, triggers=triggers, checker=checker,
        requests=requests, configs=configs, clock=_utc_now, poll_s=loop_settings.poll_s,
        retention_s=retention, purge_every_s=loop_settings.purge_every_s,
        stale_after_s=loop_settings.stale_after_s, sweep_every_s=loop_settings.sweep_every_s,
        max_concurrent_runs=loop_settings.max_concurrent_runs, lease=lease)
    service = LoopService(registry=registry, runs=runs, datasets=datasets, triggers=triggers,
                          configs=configs, scheduler=scheduler, executor=executor)
    return LifecycleRuntime(service, configs, registry, datasets, scheduler)
