"""The lifecycle scheduler: turns stored triggers into runs, one model at a time.

An APScheduler 3 ``BackgroundScheduler`` (its own thread) with the in-memory job store,
rebuilt from the ``triggers`` table: a sync job polls the table every ``poll_s`` and
adds or removes jobs so they match (APScheduler's SQLAlchemyJobStore is not used: it
pickles job state and is not meant to be shared between processes). Jobs:

- ``interval``/``cron`` triggers start a run when they fire. An interval counts from the
  model's last interval-started run, so a restart does not reset the period (an overdue
  one fires at once, once);
- condition triggers (``new_labels``, ``drift``, ``quality_drop``) are checked every
  ``check_every_s`` by ``TriggerChecker`` and start a run when one fires;
- the retention purge of the request log (``RequestStore.purge_before``) per model, every
  ``purge_every_s``;
- the stale-run sweep: refreshes the heartbeat of this scheduler's runs and fails active
  runs whose heartbeat stopped for ``stale_after_s`` (their process died).

Job settings, deliberately: ``coalesce=True`` (a backlog of missed fires runs once) and
``max_instances=1`` (a slow check never overlaps itself). ``misfire_grace_time`` — the
default of 1 s would silently drop a fire whenever the thread pool is busy for a second —
is one period for checks, sync, purge and sweep (a later fire supersedes a missed one) and
``RUN_MISFIRE_GRACE_S`` for interval and cron runs (a retrain somewhat late is still
wanted; much later, the next regular fire is the better time).

Runs execute in this scheduler's own worker threads (``max_concurrent_runs``), each
training in a spawned child. At most one run per model: ``RunStore.create`` claims the
model's slot through the database's unique index, so a second trigger, a manual retrain
or another process gets ``RunInProgress``. The trigger and the reason are recorded on
the run. ``clock`` (injectable) stamps runs and drives trigger decisions; APScheduler's
own timing is wall time.

Replicas: with a ``lease`` (``lifecycle.leases``) every replica runs a scheduler but only
the lease's holder acts — fires triggers, purges, fails stale runs and executes runs, each
run recording the holder's epoch and replica. A manual retrain asked on a follower is
queued unclaimed; the leader claims it at its next sync (or at once when elected), so it
runs once wherever it was asked. When elected, a leader first fails the runs of earlier
epochs that are still active (their leader died mid-run). Without a lease (one process,
tests) the scheduler always acts and runs carry no epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from lifecycle.errors import LifecycleError, PreconditionError
from lifecycle.loop_config import CONDITION_TRIGGERS, LifecycleConfig, TriggerSpec
from lifecycle.loop_errors import LifecycleNotConfigured, RunInProgress, RunNotFound
from lifecycle.pipeline import Retrainer
from lifecycle.request_store import PurgeResult, RequestStore
from lifecycle.runs import Run, RunStore
from lifecycle.triggers import TriggerChecker, TriggerDecision, TriggerStore

__all__ = ["RUN_MISFIRE_GRACE_S", "Leadership", "LifecycleScheduler", "ScheduledJob"]

log = logging.getLogger("lifecycle.scheduler")
RUN_MISFIRE_GRACE_S = 3600


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Leadership(Protocol):
    """What the scheduler needs of ``lifecycle.leases.Lease``."""

    replica: str

    @property
    def epoch(self) -> int | None: ...


@dataclass(frozen=True)
class ScheduledJob:
    """A job of the in-memory store: ``kind`` is a trigger kind, ``sync``, ``purge`` or
    ``sweep``; ``next_run_time`` is wall-clock UTC (None while paused)."""

    id: str
    model: str
    kind: str
    next_run_time: datetime | None


class LifecycleScheduler:
    """See the module docstring. ``start``/``stop`` once each; other methods are
    thread-safe. ``configs`` holds the lifecycle config of every model it may retrain
    (its ``triggers`` seed the table for models that have none stored)."""

    def __init__(
        self, *, retrainer: Retrainer, runs: RunStore, triggers: TriggerStore,
        checker: TriggerChecker, requests: RequestStore, configs: Mapping[str, LifecycleConfig],
        clock: Callable[[], datetime] = _utc_now, poll_s: float = 5.0,
        retention_s: Mapping[str, float] | None = None, purge_every_s: float = 3600.0,
        stale_after_s: float = 60.0, sweep_every_s: float = 15.0,
        max_concurrent_runs: int = 1, actor: str = "scheduler",
        lease: Leadership | None = None,
    ) -> None:
        self._retrainer = retrainer
        self._runs = runs
        self._triggers = triggers
        self._checker = checker
        self._requests = requests
        self._configs = dict(configs)
        self._clock = clock
        self._poll_s = poll_s
        self._retention_s = dict(retention_s or {})
        self._purge_every_s = purge_every_s
        self._stale_after_s = stale_after_s
        self._sweep_every_s = sweep_every_s
        self._max_runs = max_concurrent_runs
        self._actor = actor
        self._lease = lease
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[str, TriggerSpec]] = {}
        self._mine: set[int] = set()
        self._cancel = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ start / stop

    def start(self) -> None:
        """Seed triggers from config, fail runs left by a dead process, build the jobs
        from the tables and start the scheduler thread. Blocking (database work): from
        async code, call it in an executor."""
        if self._scheduler is not None:
            raise RuntimeError("the lifecycle scheduler was started already")
        for model, config in self._configs.items():
            try:
                if self._triggers.seed(model, config.triggers, actor="config"):
                    log.info("triggers seeded", extra={"event": "triggers_seeded",
                                                       "model": model})
            except LifecycleError as exc:
                log.warning("triggers not seeded", extra={"event": "triggers_not_seeded",
                                                          "model": model, "reason": str(exc)})
        self.sweep()
        self._executor = ThreadPoolExecutor(max_workers=self._max_runs,
                                            thread_name_prefix="lifecycle-run")
        scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": JobExecutor(max_workers=4)},
            job_defaults={"coalesce": True, "max_instances": 1})
        self._scheduler = scheduler
        self.sync()
        now = datetime.now(UTC)
        scheduler.add_job(self.sync, IntervalTrigger(seconds=self._poll_s), id="sync",
                          misfire_grace_time=max(1, int(self._poll_s)))
        scheduler.add_job(self.sweep, IntervalTrigger(seconds=self._sweep_every_s), id="sweep",
                          misfire_grace_time=max(1, int(self._sweep_every_s)))
        if self._retention_s:
            scheduler.add_job(self.purge_now, IntervalTrigger(seconds=self._purge_every_s),
                              id="purge", next_run_time=now,
                              misfire_grace_time=max(1, int(self._purge_every_s)))
        scheduler.start()

    def stop(self) -> None:
        """Stop firing, cancel active runs (their children are killed and the runs
        recorded as failed) and wait for the run threads. Blocking: call it in an
        executor, never on the serving loop — a run may be waiting on that loop (a
        promotion through ``LoopBridge``) before it can notice the cancel."""
        self._cancel.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ----------------------------------------------------------------------- runs

    def run_now(
        self, model: str, *, reason: str = "manual retrain", actor: str = "operator",
        trigger: str = "manual",
    ) -> int:
        """Start a run of ``model`` now and return its id (it runs in the background).

        Raises ``LifecycleNotConfigured``, ``RunInProgress`` (the model has an active
        run), ``PreconditionError`` when the scheduler is not running.
        """
        return self._launch(model, trigger, reason, actor, {}, anywhere=True)

    def leading(self) -> bool:
        """Whether this scheduler acts: it holds the lease, or there is no lease."""
        return self._lease is None or self._lease.epoch is not None

    def _launch(
        self, model: str, trigger: str, reason: str, actor: str, detail: Mapping[str, Any],
        *, anywhere: bool = False,
    ) -> int:
        """Create the run and execute it here when leading; ``anywhere``: on a follower,
        queue it for the leader instead of refusing."""
        config = self._configs.get(model)
        if config is None:
            raise LifecycleNotConfigured(model)
        if self._executor is None or self._cancel.is_set():
            raise PreconditionError("the lifecycle scheduler is not running")
        epoch = None if self._lease is None else self._lease.epoch
        if self._lease is not None and epoch is None:
            if not anywhere:
                raise PreconditionError(f"replica {self._lease.replica} does not lead")
            run = self._runs.create(model, trigger=trigger, reason=reason, actor=actor,
                                    params={"config": config.to_json(),
                                            "trigger_detail": dict(detail)})
            log.info("run queued for the leader", extra={
                "event": "run_queued", "run_id": run.id, "model": model, "trigger": trigger})
            return run.id
        run = self._runs.create(
            model, trigger=trigger, reason=reason, actor=actor,
            params={"config": config.to_json(), "trigger_detail": dict(detail)}, epoch=epoch,
            replica=None if self._lease is None else self._lease.replica)
        self._submit(run.id, config)
        log.info("run started", extra={"event": "run_started", "run_id": run.id,
                                       "model": model, "trigger": trigger, "reason": reason})
        return run.id

    def _submit(self, run_id: int, config: LifecycleConfig) -> None:
        executor = self._executor
        assert executor is not None, "runs are submitted only once started"
        with self._lock:
            self._mine.add(run_id)
        try:
            executor.submit(self._execute, run_id, config)
        except RuntimeError as exc:  # the executor shut down between our check and now
            with self._lock:
                self._mine.discard(run_id)
            self._runs.finish(run_id, "failed", error="the scheduler stopped before the run")
            raise PreconditionError("the lifecycle scheduler is not running") from exc

    def claim_queued(self) -> list[int]:
        """Claim and execute the runs asked for on other replicas (leader only); their
        ids."""
        lease = self._lease
        epoch = None if lease is None else lease.epoch
        if lease is None or epoch is None or self._executor is None or self._cancel.is_set():
            return []
        claimed = []
        for queued in self._runs.unclaimed():
            config = self._configs.get(queued.model)
            if config is None:
                continue
            try:
                self._runs.claim(queued.id, epoch=epoch, replica=lease.replica)
            except RunNotFound:
                continue  # claimed by another leader, or failed by the sweep meanwhile
            self._submit(queued.id, config)
            claimed.append(queued.id)
            log.info("run claimed", extra={"event": "run_claimed", "run_id": queued.id,
                                           "model": queued.model, "epoch": epoch})
        return claimed

    def on_elected(self, epoch: int) -> list[int]:
        """This replica took the lease in ``epoch``: fail the runs earlier leaders left
        active, then claim the queued ones. Returns the ids failed."""
        try:
            failed = self._runs.fail_orphaned(epoch, reason=(
                f"abandoned: the leader executing it (epoch < {epoch}) stopped before the "
                f"run ended; replica "
                f"{self._lease.replica if self._lease else '?'} leads epoch {epoch}"))
            if failed:
                log.warning("runs of a previous leader failed", extra={
                    "event": "runs_orphaned", "epoch": epoch,
                    "runs": [r.id for r in failed]})
            self.claim_queued()
        except LifecycleError as exc:
            log.warning("election follow-up failed", extra={"event": "elected_followup_failed",
                                                            "reason": str(exc)})
            return []
        return [r.id for r in failed]

    def _execute(self, run_id: int, config: LifecycleConfig) -> None:
        try:
            self._retrainer.execute(run_id, config, cancel=self._cancel)
        except Exception:
            log.error("run could not be executed", exc_info=True,
                      extra={"event": "run_not_executed", "run_id": run_id})
            # Already finished, or the database is gone: the sweep settles it later.
            with contextlib.suppress(LifecycleError):
                self._runs.finish(run_id, "failed", error="the run could not be executed")
        finally:
            with self._lock:
                self._mine.discard(run_id)

    def wait(self, run_id: int, timeout_s: float, *, poll_s: float = 0.1) -> Run:
        """The run once it finished; ``TimeoutError`` if it is still active after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self._runs.get(run_id)
            if not run.active:
                return run
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} still {run.status} after {timeout_s:g} s")
            time.sleep(poll_s)

    # -------------------------------------------------------------------- triggers

    def check_now(self, model: str) -> list[tuple[TriggerSpec, TriggerDecision, int | None]]:
        """Check every condition trigger of ``model`` now, as their jobs do, starting a
        run for the first that fires; each decision with the run id it started."""
        found = self._triggers.get(model)
        results: list[tuple[TriggerSpec, TriggerDecision, int | None]] = []
        for spec in () if found is None else found.specs:
            if spec.kind in CONDITION_TRIGGERS:
                decision, run_id = self._check(model, spec)
                results.append((spec, decision, run_id))
        return results

    def _check(self, model: str, spec: TriggerSpec) -> tuple[TriggerDecision, int | None]:
        if self._runs.active(model) is not None:
            return TriggerDecision(False, "a run is active"), None
        decision = self._checker.check(model, spec)
        if not decision.fire:
            return decision, None
        try:
            return decision, self._launch(model, spec.kind, decision.reason, self._actor,
                                          {"trigger": spec.to_json(), **decision.detail})
        except RunInProgress:
            return TriggerDecision(False, "a run is active"), None

    def _fire(self, model: str, spec: TriggerSpec) -> None:
        """Body of every trigger job: never raises into APScheduler."""
        if not self.leading():
            return
        try:
            if spec.kind in CONDITION_TRIGGERS:
                self._check(model, spec)
            else:
                self._launch(model, spec.kind, spec.describe(), self._actor,
                             {"trigger": spec.to_json()})
        except RunInProgress as exc:
            log.info("trigger skipped", extra={"event": "trigger_skipped", "model": model,
                                               "trigger": spec.kind, "reason": str(exc)})
        except Exception as exc:
            log.error("trigger failed", exc_info=not isinstance(exc, LifecycleError),
                      extra={"event": "trigger_failed", "model": model, "trigger": spec.kind,
                             "reason": str(exc)})

    def sync(self) -> None:
        """Make the scheduled jobs match the ``triggers`` table (the poll job's body)."""
        try:
            desired = self._desired()
        except LifecycleError as exc:
            log.warning("triggers not read", extra={"event": "trigger_sync_failed",
                                                    "reason": str(exc)})
            return
        scheduler = self._scheduler
        if scheduler is None:
            return
        try:
            self.claim_queued()
        except LifecycleError as exc:
            log.warning("queued runs not claimed", extra={"event": "claim_failed",
                                                          "reason": str(exc)})
        with self._lock:
            for key in set(self._jobs) - set(desired):
                del self._jobs[key]
                if scheduler.get_job(key) is not None:
                    scheduler.remove_job(key)
            for key in set(desired) - set(self._jobs):
                model, spec = desired[key]
                self._add_job(scheduler, key, model, spec)
                self._jobs[key] = (model, spec)

    def _desired(self) -> dict[str, tuple[str, TriggerSpec]]:
        desired = {}
        for found in self._triggers.list():
            if found.model not in self._configs:
                continue
            for index, spec in enumerate(found.specs):
                if spec.kind == "manual":
                    continue
                digest = hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True)
                                        .encode()).hexdigest()[:12]
                desired[f"{found.model}/{index}/{spec.kind}/{digest}"] = (found.model, spec)
        return desired

    def _add_job(self, scheduler: BackgroundScheduler, key: str, model: str,
                 spec: TriggerSpec) -> None:
        now = datetime.now(UTC)
        if spec.kind == "cron":
            scheduler.add_job(self._fire, CronTrigger.from_crontab(spec.cron, timezone=UTC),
                              args=(model, spec), id=key, misfire_grace_time=RUN_MISFIRE_GRACE_S)
        elif spec.kind == "interval":
            seconds = float(spec.seconds or 0)
            last = self._runs.last(model, trigger="interval")
            delay = seconds
            if last is not None:
                # Counted in the injected clock, applied to wall time.
                since = (self._clock() - last.created_at).total_seconds()
                delay = min(seconds, max(0.0, seconds - since))
            scheduler.add_job(self._fire, IntervalTrigger(seconds=seconds), args=(model, spec),
                              id=key, next_run_time=now + timedelta(seconds=delay),
                              misfire_grace_time=RUN_MISFIRE_GRACE_S)
        else:
            scheduler.add_job(self._fire, IntervalTrigger(seconds=spec.check_every_s),
                              args=(model, spec), id=key, next_run_time=now,
                              misfire_grace_time=max(1, int(spec.check_every_s)))

    def jobs(self) -> list[ScheduledJob]:
        """The scheduled jobs, by id."""
        scheduler = self._scheduler
        if scheduler is None:
            return []
        out = []
        for job in scheduler.get_jobs():
            model, kind = ("", job.id)
            if "/" in job.id:
                model, _, kind, _ = job.id.split("/", 3)
            out.append(ScheduledJob(job.id, model, kind, job.next_run_time))
        return sorted(out, key=lambda j: j.id)

    # ------------------------------------------------------------------ upkeep jobs

    def purge_now(self) -> dict[str, PurgeResult]:
        """Delete each model's request log older than its retention (the purge job)."""
        if not self.leading():
            return {}
        now_us = int(self._clock().timestamp() * 1e6)
        done = {}
        for model, keep_s in self._retention_s.items():
            try:
                done[model] = self._requests.purge_before(now_us - int(keep_s * 1e6),
                                                          model=model)
            except LifecycleError as exc:
                log.warning("purge failed", extra={"event": "purge_failed", "model": model,
                                                   "reason": str(exc)})
        return done

    def sweep(self) -> list[int]:
        """Keep this scheduler's runs alive and fail runs whose process died; returns the
        ids failed."""
        with self._lock:
            mine = list(self._mine)
        try:
            for run_id in mine:
                self._runs.heartbeat(run_id)
            if not self.leading():
                return []
            cutoff = self._clock() - timedelta(seconds=self._stale_after_s)
            failed = self._runs.fail_stale(cutoff, reason=(
                f"abandoned: no heartbeat for {self._stale_after_s:g} s (its process stopped)"))
        except LifecycleError as exc:
            log.warning("sweep failed", extra={"event": "sweep_failed", "reason": str(exc)})
            return []
        if failed:
            log.warning("stale runs failed", extra={"event": "runs_abandoned", "runs": failed})
        return failed
