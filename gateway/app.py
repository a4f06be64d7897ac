"""The composition root: builds every part and owns the start and stop order.

Start: database → registry → model manager (production versions) → request log (journal
recovered, replay started) → lifecycle (bootstrap datasets, scheduler) → inference gRPC
server (with the feedback service) → admin gRPC server → HTTP server.
Stop: readiness off → background tasks cancelled → lifecycle scheduler stopped (active
runs cancelled and recorded) → health NOT_SERVING → 50 ms on, new inferences refused
(UNAVAILABLE), those in flight finish → stop both servers at once (one grace) →
flush the request log (queue and journal into the database, or kept in the journal for the
next start) → unload models → close the database.

A worker of ``gateway serve --workers`` (``settings.worker``, see ``gateway.workers``)
shares the inference port with the others and serves no HTTP (the supervisor does); only
the leader (worker 0) serves the admin port and runs the lifecycle and experiment loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from prometheus_client import Counter

from gateway.arm_stats import ArmStatsBook
from gateway.auth import TokenAuthority
from gateway.dataplane import DataPlane
from gateway.experiments import ExperimentLoops
from gateway.http import HttpEndpoint
from gateway.lifecycle_runtime import LifecycleRuntime, build_lifecycle
from gateway.metrics import GatewayMetrics
from gateway.model_manager import ModelManager
from gateway.pb import admin_pb2_grpc, feedback_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc
from gateway.replica_state import ReplicaPublisher
from gateway.request_log import RequestLog
from gateway.request_log.build import DAY_S, build_request_log
from gateway.request_log.feedback import FeedbackIntake
from gateway.rpc.admin_auth import ADMIN_SERVICE, AdminInterceptor
from gateway.rpc.admin_servicer import AdminServicer
from gateway.rpc.feedback_servicer import FEEDBACK_SERVICE, FeedbackServicer
from gateway.rpc.inference_servicer import InferenceServicer
from gateway.rpc.server import add_health_and_reflection, bind, server_options
from gateway.rpc.status import status_name
from gateway.seeding import seed_models
from gateway.settings import ConfigError, Settings
from gateway.shadow import ShadowRunner
from gateway.stats import StatsBook
from gateway.traffic_service import TrafficService
from lifecycle.artifacts import ArtifactStore
from lifecycle.canary import CanaryController
from lifecycle.db import Database, make_engine, migrate
from lifecycle.errors import StorageUnavailable
from lifecycle.leases import CONTROL_LEASE, LIFECYCLE_LEASE, Lease, LeaseKeeper
from lifecycle.live_stats import BanditRewarder, RequestLogArmStats
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.replicas import ReplicaStore
from lifecycle.request_store import RequestStore
from lifecycle.service import LifecycleService

log = logging.getLogger("gateway.app")
DRAIN_NOTICE_S = 0.05
INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class GatewayApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        worker = settings.worker
        self.metrics = GatewayMetrics(multiprocess_dir=worker.metrics_dir if worker else None,
                                      worker=worker.index if worker else None)
        self.stats = StatsBook()
        self.ports: dict[str, int] = {}
        self._ready = False
        self._pool = ThreadPoolExecutor(settings.inference_threads, "inference")
        self._db_pool = ThreadPoolExecutor(1, "db")
        self._load_pool = ThreadPoolExecutor(1, "model-load")
        self._admin_pool = ThreadPoolExecutor(1, "admin")
        self._grpc: grpc.aio.Server | None = None
        self._admin: grpc.aio.Server | None = None
        self._admin_health: health.aio.HealthServicer | None = None
        self._inference: InferenceServicer | None = None
        self._http: HttpEndpoint | None = None
        self._health: health.aio.HealthServicer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.database: Database | None = None
        self.manager: ModelManager | None = None
        self.request_log: RequestLog | None = None
        self._requests: RequestStore | None = None
        self.lifecycle: LifecycleRuntime | None = None
        self.arm_stats = ArmStatsBook()
        self.shadows: ShadowRunner | None = None
        self._canary: CanaryController | None = None
        # The control lease (canary and bandit loops) and the lifecycle lease (triggers
        # and runs): held by one process among all sharing the database; a replica with
        # the lifecycle off never takes the second, so the lifecycle runs where it is on.
        self._leases: dict[str, LeaseKeeper] = {}
        self._replica_state: ReplicaPublisher | None = None

    def is_ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        engine = make_engine(settings.effective_database_url)
        await loop.run_in_executor(self._db_pool, migrate, engine)
        self.database = Database(engine)
        if settings.leader:
            names = [CONTROL_LEASE] + ([LIFECYCLE_LEASE] if settings.lifecycle_enabled else [])
            self._leases = {name: LeaseKeeper(
                Lease(self.database, replica=settings.effective_replica_id, name=name,
                      lease_s=settings.lifecycle.leader_lease_s),
                on_elected=self._elected if name == LIFECYCLE_LEASE else None)
                for name in names}
        registry = Registry(self.database)
        artifacts = ArtifactStore(settings.effective_artifacts_dir)
        await loop.run_in_executor(self._load_pool, seed_models, settings, registry, artifacts)

        self.manager = ModelManager(
            settings=settings, registry=registry, policies=PolicyStore(self.database),
            artifacts=artifacts, metrics=self.metrics,
            stats=self.stats, load_executor=self._load_pool, db_executor=self._db_pool,
            inference_executor=self._pool,
        )
        self.manager.on_change = self._model_changed
        await self.manager.start()
        self._spawn(self._follow_policies())
        # What this process serves, for `models show` on any replica (now, every sync
        # period, and after each change through ``_model_changed``).
        self._replica_state = ReplicaPublisher(
            ReplicaStore(self.database), self.manager, replica_id=settings.effective_replica_id,
            period_s=settings.traffic.policy_sync_s, executor=self._db_pool)
        self._spawn(self._replica_state.run())
        if self.metrics.multiprocess:
            self._spawn(self.metrics.publish_every())
        await self._start_request_log()
        self._start_experiments(registry)
        await self._start_lifecycle(registry, artifacts)

        authority = TokenAuthority(settings.tokens)
        dataplane = DataPlane(self.manager, self._pool, self.metrics,
                              request_log=self.request_log, status_name=status_name,
                              shadows=self.shadows, arm_stats=self.arm_stats,
                              rng=random.Random())
        # Beyond the limit grpc answers RESOURCE_EXHAUSTED at once: overload is shed at
        # the door instead of queueing on a saturated event loop until deadlines pass.
        server = grpc.aio.server(options=server_options(settings),
                                 maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
        self._inference = InferenceServicer(
            dataplane=dataplane, manager=self.manager, stats=self.stats,
            authority=authority,
            allow_repository_control=settings.allow_repository_control,
            readiness=self.is_ready, access_log_sample=settings.access_log_sample,
            metadata_keys=settings.request_log.metadata_keys if self.request_log else (),
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self._inference, server)
        feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(
            FeedbackServicer(FeedbackIntake(self.request_log, self.manager.get)), server)
        self._health = add_health_and_reflection(server, [INFERENCE_SERVICE, FEEDBACK_SERVICE])
        self.ports["grpc"] = bind(server, settings.host, settings.grpc_port, settings.tls)
        self._grpc = server
        await server.start()
        if settings.leader:
            await self._start_admin(registry, artifacts, authority)
        if settings.worker is None:
            self._http = HttpEndpoint(
                metrics=self.metrics.exposition, live=lambda: True, ready=self.is_ready
            )
            self.ports["http"] = await self._http.start(settings.host, settings.http_port)

        for served in self.manager.models():
            await self._set_health(served.name)
        assert self._health is not None
        await self._health.set(FEEDBACK_SERVICE, health_pb2.HealthCheckResponse.SERVING
                               if self.request_log else health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # GC's full collections. The request log holds each record for a flush interval,
        # long enough to be promoted to the oldest generation, so full collections come
        # often; without this each one walks the whole heap (≈ 90 ms, measured).
        gc.collect()
        gc.freeze()
        self._ready = True
        log.info("serving", extra={"event": "started", "ports": self.ports,
                                   "models": [m.name for m in self.manager.models()]})
        if settings.port_file is not None:
            _write_port_file(settings.port_file, self.ports)

    async def _start_request_log(self) -> None:
        """The store always (the admin service reads it); the engine when enabled. Its
        start scans the journal, so it runs off the event loop."""
        settings = self.settings
        assert self.database is not None
        self._requests = RequestStore(
            self.database, join_window_s=settings.request_log.join_window_hours * 3600.0)
        if not settings.request_log.enabled:
            return
        request_log = build_request_log(settings, self._requests, self.metrics.registry)
        try:
            recovery = await asyncio.get_running_loop().run_in_executor(
                self._db_pool, request_log.start)
        except OSError as exc:
            raise ConfigError(settings.source, "request_log.journal_dir",
                              f"cannot use {settings.effective_journal_dir}: {exc}") from exc
        self.request_log = request_log
        log.info("request log started", extra={
            "event": "request_log_started", "journal": str(settings.effective_journal_dir),
            "replay_records": recovery.pending_frames})

    def _start_experiments(self, registry: Registry) -> None:
        """Shadow runner, canary controller and bandit rewarder, with their loops."""
        assert self.database is not None and self.manager is not None
        assert self._requests is not None
        traffic = self.settings.traffic
        dropped = Counter("gateway_shadow_dropped_total",
                          "Shadow copies dropped on a full shadow queue", ["model"],
                          registry=self.metrics.registry)
        self.shadows = ShadowRunner(self._pool, self.request_log,
                                    queue_max=traffic.shadow_queue_max,
                                    on_drop=lambda model: dropped.labels(model).inc())
        self._spawn(self.shadows.run())
        policies = PolicyStore(self.database)
        self._canary = CanaryController(policies, registry, RequestLogArmStats(self._requests),
                                        self.manager, actor="canary", executor=self._db_pool)
        control = self._leases.get(CONTROL_LEASE)
        loops = ExperimentLoops(
            manager=self.manager, canary=self._canary,
            rewarder=BanditRewarder(self._requests, policies), executor=self._db_pool,
            canary_tick_s=traffic.canary_tick_s, bandit_update_s=traffic.bandit_update_s,
            leading=(lambda: True) if control is None else (lambda: control.lease.leader))
        if self.settings.leader:
            # They write the policies every worker follows: one process runs them.
            self._spawn(loops.run_canaries())
            self._spawn(loops.run_bandits())

    async def _start_lifecycle(self, registry: Registry, artifacts: ArtifactStore) -> None:
        """The retraining loop (``gateway.lifecycle_runtime``). Its start does database
        work and its scheduler owns threads: off the event loop."""
        assert self.database is not None and self.manager is not None
        assert self._requests is not None and self._canary is not None
        loop = asyncio.get_running_loop()
        self.lifecycle = build_lifecycle(
            self.settings, database=self.database, registry=registry, artifacts=artifacts,
            requests=self._requests, policies=PolicyStore(self.database),
            deployer=self.manager, loop=loop, executor=self._db_pool, canary=self._canary,
            lease=self._leases[LIFECYCLE_LEASE].lease if LIFECYCLE_LEASE in self._leases
            else None)
        for keeper in self._leases.values():
            # Its first round before the scheduler starts: a lone gateway leads at once.
            await loop.run_in_executor(None, keeper.start)
        await loop.run_in_executor(None, self.lifecycle.start)

    def _elected(self, epoch: int) -> None:
        """On the lifecycle lease's thread: this replica now runs the lifecycle."""
        lifecycle = self.lifecycle
        if lifecycle is not None and lifecycle.scheduler is not None:
            lifecycle.scheduler.on_elected(epoch)

    async def _start_admin(self, registry: Registry, artifacts: ArtifactStore,
                           authority: TokenAuthority) -> None:
        settings = self.settings
        assert self.manager is not None and self.database is not None
        lifecycle = LifecycleService(
            registry=registry, artifacts=artifacts, deployer=self.manager,
            db_executor=self._db_pool, work_executor=self._admin_pool,
            max_upload_bytes=settings.max_upload_bytes,
            # Leave room for the message framing around a download chunk.
            max_chunk_bytes=min(4 * 1024 * 1024, settings.max_message_bytes // 2),
            requests=self._requests, replicas=ReplicaStore(self.database),
            request_retention_s=lambda model: settings.logging_of(model).retention_days * DAY_S,
        )
        admin = grpc.aio.server(options=server_options(settings),
                                interceptors=[AdminInterceptor(authority)])
        assert self._canary is not None and self._requests is not None
        traffic = TrafficService(
            manager=self.manager, policies=PolicyStore(self.database), canary=self._canary,
            arm_stats=self.arm_stats, shadows=self.shadows,
            live=RequestLogArmStats(self._requests), db_executor=self._db_pool)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(
            lifecycle, loop=self.lifecycle.service if self.lifecycle else None,
            traffic=traffic), admin)
        health = add_health_and_reflection(admin, [ADMIN_SERVICE.full_name])
        self.ports["admin"] = bind(admin, settings.host, settings.admin_port, settings.tls)
        self._admin, self._admin_health = admin, health
        await admin.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_policies(self) -> None:
        """Poll the database for production moves and policy changes made elsewhere (canary
        steps, other workers and replicas) and for bandit reward counts."""
        assert self.manager is not None
        while True:
            await asyncio.sleep(self.settings.traffic.policy_sync_s)
            try:
                await self.manager.sync_aliases()
                await self.manager.sync_policies()
            except StorageUnavailable as exc:
                log.warning("policy sync failed", extra={"event": "policy_sync_failed",
                                                         "reason": str(exc)})
            except Exception:
                log.exception("policy sync failed", extra={"event": "policy_sync_failed"})

    def _model_changed(self, model: str) -> None:
        if self._replica_state is not None:
            self._replica_state.notify(model)
        if self._health is None:
            return
        self._spawn(self._set_health(model))

    async def _set_health(self, model: str) -> None:
        assert self._health is not None and self.manager is not None
        status = (health_pb2.HealthCheckResponse.SERVING if self.manager.is_ready(model)
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set(model, status)

    async def stop(self) -> None:
        self._ready = False
        gc.unfreeze()
        for task in list(self._tasks):
            task.cancel()
        if self.lifecycle is not None:
            # In an executor: a run may be waiting on this loop (a promotion) before it
            # can see the cancel.
            await asyncio.get_running_loop().run_in_executor(None, self.lifecycle.stop)
        for keeper in self._leases.values():
            # Released, so another replica takes the loops over at once.
            await asyncio.get_running_loop().run_in_executor(None, keeper.stop)
        grace = self.settings.shutdown_grace_s
        deadline = time.monotonic() + grace
        for servicer in (self._admin_health, self._health):
            if servicer is not None:
                await servicer.enter_graceful_shutdown()
        if self._inference is not None:
            await self._drain_inference(self._inference, deadline)
        # Both ports drain at once under one grace (the admin port still stops taking calls
        # first): one after the other, a stream held open on each took twice the grace.
        remaining = max(0.0, deadline - time.monotonic())
        await asyncio.gather(*(server.stop(remaining) for server in (self._admin, self._grpc)
                               if server is not None))
        self.metrics.publish()
        if self._replica_state is not None:
            await self._replica_state.withdraw()  # before the database executor stops
        if self._http is not None:
            await self._http.stop()
        if self.request_log is not None:
            # After the drain (no more records can arrive), before the database closes.
            await asyncio.get_running_loop().run_in_executor(
                self._db_pool, self.request_log.stop, self.settings.request_log.stop_timeout_s)
        if self.shadows is not None:
            self.shadows.close()
        if self.manager is not None:
            await self.manager.close()
        for pool in (self._pool, self._admin_pool, self._load_pool, self._db_pool):
            pool.shutdown(wait=True, cancel_futures=True)
        if self.database is not None:
            self.database.close()
        log.info("stopped", extra={"event": "stopped"})

    async def _drain_inference(self, servicer: InferenceServicer, deadline: float) -> None:
        """With readiness already false: serve ``DRAIN_NOTICE_S`` longer (health watchers
        hear NOT_SERVING before any refusal; calls sent before the signal are served), then
        refuse new inferences (UNAVAILABLE) and wait until none is in flight (or
        ``deadline``), at least ``DRAIN_NOTICE_S`` again. Only then may the server stop:
        grpc CANCELS the calls it has received but not yet handed to the servicer when it
        stops (grpc/grpc#41785); handed over meanwhile, they get a retryable UNAVAILABLE."""
        assert self.manager is not None
        await asyncio.sleep(DRAIN_NOTICE_S)
        servicer.drain()
        await asyncio.sleep(DRAIN_NOTICE_S)
        while any(m.inflight for m in self.manager.models()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def wait_for_termination(self) -> None:
        assert self._grpc is not None
        await self._grpc.wait_for_termination()


def _write_port_file(path: Path, ports: dict[str, int]) -> None:
    """Atomically, so a reader polling for the file never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**ports, "pid": os.getpid()}))
    os.replace(tmp, path)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    app = GatewayApp(settings)
    try:
        await app.start()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await app.stop()
