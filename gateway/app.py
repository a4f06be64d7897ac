"""The composition root: builds every part and owns the start and stop order.

Start: database → registry → model manager (production versions) → inference gRPC server →
admin gRPC server → HTTP server.
Stop: readiness off → drain RPCs (admin first, then inference) → stop servers → unload
models → close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from gateway.auth import TokenAuthority
from gateway.dataplane import DataPlane
from gateway.http import HttpEndpoint
from gateway.metrics import GatewayMetrics
from gateway.model_manager import ModelManager
from gateway.pb import admin_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc
from gateway.rpc.admin_auth import ADMIN_SERVICE, AdminInterceptor
from gateway.rpc.admin_servicer import AdminServicer
from gateway.rpc.inference_servicer import InferenceServicer
from gateway.rpc.server import add_health_and_reflection, bind, server_options
from gateway.seeding import seed_models
from gateway.settings import Settings
from gateway.stats import StatsBook
from lifecycle.artifacts import ArtifactStore
from lifecycle.db import Database, make_engine, migrate
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.service import LifecycleService

log = logging.getLogger("gateway.app")
POLICY_SYNC_S = 2.0
INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class GatewayApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.stats = StatsBook()
        self.ports: dict[str, int] = {}
        self._ready = False
        self._pool = ThreadPoolExecutor(settings.inference_threads, "inference")
        self._db_pool = ThreadPoolExecutor(1, "db")
        self._load_pool = ThreadPoolExecutor(1, "model-load")
        self._admin_pool = ThreadPoolExecutor(1, "admin")
        self._grpc: grpc.aio.Server | None = None
        self._admin: grpc.aio.Server | None = None
        self._admin_health = None
        self._http: HttpEndpoint | None = None
        self._health = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.database: Database | None = None
        self.manager: ModelManager | None = None

    def is_ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        engine = make_engine(settings.effective_database_url)
        await loop.run_in_executor(self._db_pool, migrate, engine)
        self.database = Database(engine)
        registry = Registry(self.database)
        artifacts = ArtifactStore(settings.effective_artifacts_dir)
        await loop.run_in_executor(self._load_pool, seed_models, settings, registry, artifacts)

        self.manager = ModelManager(
            settings=settings, registry=registry, policies=PolicyStore(self.database),
            artifacts=artifacts, metrics=self.metrics,
            stats=self.stats, load_executor=self._load_pool, db_executor=self._db_pool,
        )
        self.manager.on_change = self._model_changed
        await self.manager.start()
        self._spawn(self._follow_policies())

        authority = TokenAuthority(settings.tokens)
        dataplane = DataPlane(self.manager, self._pool, self.metrics)
        server = grpc.aio.server(options=server_options(settings))
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(
                dataplane=dataplane, manager=self.manager, stats=self.stats,
                authority=authority,
                allow_repository_control=settings.allow_repository_control,
                readiness=self.is_ready, access_log_sample=settings.access_log_sample,
            ),
            server,
        )
        self._health = add_health_and_reflection(server, [INFERENCE_SERVICE])
        self.ports["grpc"] = bind(server, settings.host, settings.grpc_port, settings.tls)
        self._grpc = server
        await server.start()
        await self._start_admin(registry, artifacts, authority)

        self._http = HttpEndpoint(
            metrics=self.metrics.exposition, live=lambda: True, ready=self.is_ready
        )
        self.ports["http"] = await self._http.start(settings.host, settings.http_port)

        for served in self.manager.models():
            await self._set_health(served.name)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._ready = True
        log.info("serving", extra={"event": "started", "ports": self.ports,
                                   "models": [m.name for m in self.manager.models()]})
        if settings.port_file is not None:
            _write_port_file(settings.port_file, self.ports)

    async def _start_admin(self, registry: Registry, artifacts: ArtifactStore,
                           authority: TokenAuthority) -> None:
        settings = self.settings
        assert self.manager is not None
        lifecycle = LifecycleService(
            registry=registry, artifacts=artifacts, deployer=self.manager,
            db_executor=self._db_pool, work_executor=self._admin_pool,
            max_upload_bytes=settings.max_upload_bytes,
            # Leave room for the message framing around a download chunk.
            max_chunk_bytes=min(4 * 1024 * 1024, settings.max_message_bytes // 2),
        )
        admin = grpc.aio.server(options=server_options(settings),
                                interceptors=[AdminInterceptor(authority)])
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(lifecycle), admin)
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
        """Poll the database for policy changes made elsewhere (canary steps, other
        replicas) and for bandit reward counts."""
        assert self.manager is not None
        while True:
            await asyncio.sleep(POLICY_SYNC_S)
            try:
                await self.manager.sync_policies()
            except Exception:
                log.exception("policy sync failed", extra={"event": "policy_sync_failed"})

    def _model_changed(self, model: str) -> None:
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
        for task in list(self._tasks):
            task.cancel()
        grace = self.settings.shutdown_grace_s
        for health in (self._admin_health, self._health):
            if health is not None:
                await health.enter_graceful_shutdown()
        if self._admin is not None:
            await self._admin.stop(grace)
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._http is not None:
            await self._http.stop()
        if self.manager is not None:
            await self.manager.close()
        for pool in (self._pool, self._admin_pool, self._load_pool, self._db_pool):
            pool.shutdown(wait=True, cancel_futures=True)
        if self.database is not None:
            self.database.close()
        log.info("stopped", extra={"event": "stopped"})

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
