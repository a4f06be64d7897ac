"""Loads, warms, swaps and drains model versions; resolves a request to a ready version.

Availability first (TF Serving's rule): a version is loaded and warmed before anything
points at it, and closed only once its in-flight count is zero. All state here is mutated
on the event loop thread; blocking work (artifact reads, session creation, warm-up,
registry calls) runs in the executors passed in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import psutil

from gateway.batching import Batcher
from gateway.errors import ModelLoadError, ModelNotFound, NotReady, VersionNotFound
from gateway.metrics import GatewayMetrics
from gateway.routing import RandomSource, Route, resolve
from gateway.runtime import OnnxModel, WarmupReport
from gateway.served import LoadedVersion, ServedModel
from gateway.settings import ModelSettings, Settings
from gateway.stats import StatsBook
from lifecycle.artifacts import ArtifactStore
from lifecycle.deployer import ServingState, VersionLoad
from lifecycle.domain import PRODUCTION, AliasChange, Signature
from lifecycle.errors import AliasNotFound, ArtifactError, LifecycleError
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.traffic import Policy

log = logging.getLogger("gateway.models")
T = TypeVar("T")
__all__ = ["LoadedVersion", "ModelManager", "ServedModel"]


class ModelManager:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        policies: PolicyStore,
        artifacts: ArtifactStore,
        metrics: GatewayMetrics,
        stats: StatsBook,
        load_executor: Executor,
        db_executor: Executor,
        inference_executor: Executor | None = None,
    ) -> None:
        """``inference_executor`` runs the batches of versions with dynamic batching that
        are too slow to run inline (None: they run inline)."""
        self._settings = settings
        self._registry = registry
        self._policies = policies
        self._artifacts = artifacts
        self._metrics = metrics
        self._stats = stats
        self._load_executor = load_executor
        self._db_executor = db_executor
        self._inference_executor = inference_executor
        self._models: dict[str, ServedModel] = {}
        self.on_change: Callable[[str], None] = lambda _model: None

    # -- hot path -----------------------------------------------------------------------

    def route(
        self, model: str, pinned_version: str, routing_key: str | None, rng: RandomSource
    ) -> tuple[ServedModel, Route[LoadedVersion]]:
        """Where one request goes, by the model's current routing table."""
        served = self._models.get(model)
        if served is None:
            raise ModelNotFound(model)
        table = served.table
        if table is None:
            raise NotReady(f"model '{model}' has no version loaded and ready")
        return served, resolve(table, pinned_version=pinned_version, routing_key=routing_key,
                               rng=rng)

    def resolve(self, model: str, version: str) -> tuple[ServedModel, LoadedVersion]:
        """The version a request naming ``version`` (or none: production) would get."""
        served = self._models.get(model)
        if served is None:
            raise ModelNotFound(model)
        if not version:
            chosen = served.production
            if chosen is None:
                raise NotReady(f"model '{model}' has no version loaded and ready")
            return served, chosen
        route = served.table.pinned.get(version) if served.table is not None else None
        if route is None:
            raise VersionNotFound(model, version)
        return served, route.handle

    # -- queries ------------------------------------------------------------------------

    def get(self, model: str) -> ServedModel:
        served = self._models.get(model)
        if served is None:
            raise ModelNotFound(model)
        return served

    def models(self) -> list[ServedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def is_ready(self, model: str, version: str = "") -> bool:
        try:
            self.resolve(model, version)
        except (ModelNotFound, VersionNotFound, NotReady):
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------------

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_executor, lambda: fn(*args, **kwargs))

    async def start(self) -> None:
        """Serve every registered model's production version and its recorded loads."""
        models = await self.db(self._registry.list_models)
        loads = await self.db(self._registry.list_loads)
        policies = await self.db(self._policies.list_policies)
        for model in models:
            served = self._track(model.name, model.signature)
            served.explicit = {r.version for r in loads if r.model == model.name}
            if not await self.db(self._registry.is_serving, model.name):
                continue
            try:
                production = await self.db(self._registry.get_alias, model.name, PRODUCTION)
            except AliasNotFound:
                production = None
            served.policy = policies.get(model.name)
            if served.policy is not None and served.policy.bandit is not None:
                served.counts = await self.db(self._policies.bandit_counts,
                                              served.policy.experiment_id)
            wanted = sorted(served.needed() | ({production} if production else set()))
            for version in wanted:
                try:
                    await self._ensure_loaded(served, version)
                except ModelLoadError as exc:
                    log.error("version failed to load at start", extra={
                        "event": "load_failed", "model": model.name, "version": version,
                        "reason": str(exc)})
            if production in served.versions:
                served.production = served.versions[production]
            served.reroute()
            self.on_change(model.name)

    def _track(self, name: str, signature: Signature) -> ServedModel:
        served = self._models.get(name)
        if served is None:
            model_settings = self._settings.model(name) or ModelSettings(name=name)
            served = ServedModel(name=name, settings=model_settings, signature=signature)
            self._models[name] = served
            self._metrics.inflight.labels(name).set_function(lambda: served.inflight)
            self._metrics.loaded_versions.labels(name).set_function(lambda: len(served.versions))
        return served

    async def _ensure_loaded(self, served: ServedModel, version: int) -> LoadedVersion:
        existing = served.versions.get(version)
        if existing is not None and not existing.draining:
            return existing
        try:
            loaded = await self._load(served, version)
        except ModelLoadError as exc:
            served.failures[version] = str(exc)
            self._metrics.model_loads.labels(served.name, "failed").inc()
            raise
        served.failures.pop(version, None)
        served.versions[version] = loaded
        served.reroute()
        self._metrics.model_loads.labels(served.name, "ok").inc()
        log.info("version loaded", extra={
            "event": "loaded", "model": served.name, "version": version,
            "inline": loaded.inline, "warmup_p99_us": round(loaded.warmup.p99_us, 1),
            "rss_mb": round(loaded.rss_bytes / 2**20, 1)})
        return loaded

    async def _load(self, served: ServedModel, version: int) -> LoadedVersion:
        record = await self.db(self._registry.get_version, served.name, version)
        options = served.settings.runtime
        iterations = served.settings.warmup_iterations

        def build() -> tuple[OnnxModel, WarmupReport, int]:
            rss_before = _rss_bytes()
            try:
                data = self._artifacts.read(record.sha256)
            except ArtifactError as exc:
                raise ModelLoadError(f"artifact of version {version}: {exc}") from exc
            onnx = OnnxModel(data, options)
            mismatch = served.signature.mismatch(onnx.signature)
            if mismatch:
                raise ModelLoadError(f"signature differs from the model's: {mismatch}")
            warmup = onnx.warm_up(iterations)
            return onnx, warmup, max(0, _rss_bytes() - rss_before)

        loop = asyncio.get_running_loop()
        onnx, warmup, rss = await loop.run_in_executor(self._load_executor, build)
        limit = served.settings.inline_max_us
        if limit is None:
            limit = self._settings.inline_max_us
        label = str(version)
        inline = warmup.p99_us < limit
        stats = self._stats.get(served.name, label)
        batching = served.settings.dynamic_batching
        batcher = None if batching is None else Batcher(
            served.name, version, onnx, batching, stats,
            executor=None if inline else self._inference_executor,
            slots=self._settings.inference_threads)
        return LoadedVersion(
            model=served.name, version=version, onnx=onnx, inline=inline,
            warmup=warmup, stats=stats, metrics=self._metrics.version(served.name, label),
            batcher=batcher, rss_bytes=rss,
        )

    async def _retire(self, served: ServedModel, version: int) -> None:
        """Unpublish a version, wait for its in-flight requests, then drop it."""
        loaded = served.versions.pop(version, None)
        if loaded is None:
            return
        served.reroute()
        await loaded.drain()
        log.info("version unloaded", extra={
            "event": "unloaded", "model": served.name, "version": version})

    async def load_version(self, model: str, version: int, *, actor: str) -> LoadedVersion:
        """Explicitly load ``version`` (recorded; restored at start)."""
        served = self.get(model)
        async with served.lock:
            loaded = await self._ensure_loaded(served, version)
            served.explicit.add(version)
            served.reroute()
            await self.db(self._registry.record_load, model, version, actor=actor)
        self.on_change(model)
        return loaded

    async def unload_version(self, model: str, version: int, *, actor: str) -> None:
        served = self.get(model)
        async with served.lock:
            served.explicit.discard(version)
            served.reroute()
            await self.db(self._registry.record_unload, model, version, actor=actor)
            if version not in served.needed():
                await self._retire(served, version)
        self.on_change(model)

    async def promote(self, model: str, version: int, *, actor: str) -> int | None:
        """Load and warm ``version``, move the production alias, swap, drain the old one.

        A failed load or warm-up leaves the current production serving, the alias unmoved,
        and an event recording why. Returns the previous production version.
        """
        served = self.get(model)
        async with served.lock:
            try:
                loaded = await self._ensure_loaded(served, version)
            except ModelLoadError as exc:
                await self.db(self._registry.record_event, actor, "promote.failed",
                              model=model, version=version, detail={"reason": str(exc)})
                raise
            try:
                change = await self.db(self._registry.set_alias, model, PRODUCTION, version,
                                       actor=actor)
            except BaseException:
                # The alias did not move: nothing may keep the version we just loaded.
                if version not in served.needed():
                    await self._retire(served, version)
                raise
            await self._end_experiment(served, actor=actor, reason=f"promoted version {version}")
            await self._swap(served, loaded)
        self.on_change(model)
        return change.previous

    async def rollback(self, model: str, *, actor: str) -> AliasChange:
        """Point production back at the version that held it before the current one.

        Under the model's lock (so promotions and rollbacks of one model are serialized):
        preview the target, load and warm it, move the alias with a compare-and-set, swap,
        drain the old one. A target that fails to load leaves the current production
        serving and the alias unmoved, and a ``rollback.failed`` event records why.
        Raises the registry's ``PreconditionError`` when there is nothing to go back to.
        """
        served = self.get(model)
        async with served.lock:
            plan = await self.db(self._registry.rollback_target, model, PRODUCTION)
            try:
                loaded = await self._ensure_loaded(served, plan.current)
            except ModelLoadError as exc:
                await self.db(self._registry.record_event, actor, "rollback.failed",
                              model=model, version=plan.current,
                              detail={"reason": str(exc), "from": plan.previous})
                raise
            try:
                change = await self.db(self._registry.rollback, model, PRODUCTION,
                                       actor=actor, expected=plan.previous)
            except BaseException:
                if plan.current not in served.needed():
                    await self._retire(served, plan.current)
                raise
            await self._end_experiment(
                served, actor=actor, reason=f"rolled back to version {plan.current}")
            await self._swap(served, loaded)
        self.on_change(model)
        return change

    async def _swap(self, served: ServedModel, loaded: LoadedVersion) -> None:
        """Make ``loaded`` production; drain and drop the old one unless still needed."""
        previous = served.production
        served.production = loaded
        served.reroute()
        if previous is not None and previous.version not in served.needed():
            await self._retire(served, previous.version)

    async def _end_experiment(self, served: ServedModel, *, actor: str, reason: str) -> None:
        """Promote and rollback end any running experiment: 100% on the new production."""
        if served.policy is None:
            return
        await self.db(self._policies.end_experiment, served.name, actor=actor, reason=reason)
        served.policy = None
        served.counts = {}

    def serving_state(self, model: str) -> ServingState:
        """A snapshot of what is served of ``model`` (empty for an unknown model)."""
        served = self._models.get(model)
        if served is None:
            return ServingState(model)
        production = served.production
        loads = []
        for number in sorted(set(served.versions) | set(served.failures) | served.explicit):
            loaded = served.versions.get(number)
            explicit = number in served.explicit
            if loaded is not None:
                loads.append(VersionLoad(
                    model, number, "loaded", production=loaded is production,
                    explicit=explicit, in_flight=loaded.inflight,
                    warmup_p99_us=loaded.warmup.p99_us, rss_bytes=loaded.rss_bytes))
            elif number in served.failures:
                loads.append(VersionLoad(model, number, "failed", explicit=explicit,
                                         failure=served.failures[number]))
            else:
                loads.append(VersionLoad(model, number, explicit=explicit))
        return ServingState(
            model, production=None if production is None else production.version,
            in_flight=served.inflight, versions=tuple(loads))

    async def load_model(self, model: str, version: int | None, *, actor: str) -> None:
        """Repository load: serve ``version`` (default: production) and mark the model served."""
        served = self.get(model)
        async with served.lock:
            if version is None:
                try:
                    version = await self.db(self._registry.get_alias, model, PRODUCTION)
                except AliasNotFound as exc:
                    raise NotReady(f"model '{model}' has no production version to load") from exc
            loaded = await self._ensure_loaded(served, version)
            await self.db(self._registry.set_serving, model, True, actor=actor)
            if served.production is None:
                served.production = loaded
            else:
                served.explicit.add(version)
                await self.db(self._registry.record_load, model, version, actor=actor)
            served.reroute()
        self.on_change(model)

    async def unload_model(self, model: str, *, actor: str) -> None:
        """Repository unload: stop serving every version of ``model`` (recorded)."""
        served = self.get(model)
        async with served.lock:
            await self.db(self._registry.set_serving, model, False, actor=actor)
            served.production = None
            served.reroute()
            for version in list(served.versions):
                await self._retire(served, version)
        self.on_change(model)

    async def prepare(self, model: str, versions: frozenset[int] | set[int]) -> None:
        """Load and warm ``versions`` before a policy naming them is stored elsewhere (a
        canary start); raises ``ModelLoadError`` and leaves routing untouched."""
        served = self.get(model)
        async with served.lock:
            for version in sorted(versions):
                await self._ensure_loaded(served, version)

    async def apply_policy(self, model: str, policy: Policy | None, *, actor: str) -> Policy | None:
        """Store ``policy`` (None: clear it) and serve it: every version it names is loaded
        and warmed first; a failed load leaves the old policy serving. Returns the stored
        policy (with its experiment id)."""
        served = self.get(model)
        async with served.lock:
            if policy is not None:
                for version in sorted(policy.versions()):
                    await self._ensure_loaded(served, version)
                stored: Policy | None = await self.db(
                    self._policies.set_policy, model, policy, actor=actor)
            else:
                await self.db(self._policies.clear_policy, model, actor=actor)
                stored = None
            await self._install_policy(served, stored)
        self.on_change(model)
        return stored

    async def _install_policy(self, served: ServedModel, policy: Policy | None) -> None:
        """Route by ``policy`` (already stored) and drop the versions nothing needs now."""
        served.policy = policy
        served.counts = {}
        if policy is not None and policy.bandit is not None:
            served.counts = await self.db(self._policies.bandit_counts, policy.experiment_id)
        served.reroute()
        for version in sorted(set(served.versions) - served.needed()):
            await self._retire(served, version)

    async def sync_aliases(self) -> None:
        """Follow production moves made elsewhere (another worker or replica promoted or
        rolled back, or created the model and promoted its first version): load and warm
        the new version, then swap and drain the old one; the alias is not moved again. A
        version that fails to load is logged once and left (``failures``); the current
        production keeps serving. A model this process stopped serving (repository unload)
        stays stopped. Called periodically, before ``sync_policies`` (the process that
        moved the alias also ended any experiment)."""
        stored = await self.db(self._registry.alias_versions, PRODUCTION)
        for name, version in stored.items():
            served = self._models.get(name)
            current = None if served is None or served.production is None else (
                served.production.version)
            if version == current or (served is not None and version in served.failures):
                continue
            if current is None and not await self._serves_elsewhere(name):
                continue
            if served is None:
                model = await self.db(self._registry.get_model, name)
                served = self._track(name, model.signature)
            async with served.lock:
                previous = None if served.production is None else served.production.version
                if version == previous:
                    continue
                try:
                    loaded = await self._ensure_loaded(served, version)
                except ModelLoadError as exc:
                    log.error("production moved elsewhere to a version that fails to load",
                              extra={"event": "alias_follow_failed", "model": name,
                                     "version": version, "reason": str(exc)})
                    continue
                await self._swap(served, loaded)
            log.info("production moved elsewhere: followed", extra={
                "event": "alias_followed", "model": name, "version": version,
                "previous": previous})
            self.on_change(name)

    async def _serves_elsewhere(self, name: str) -> bool:
        """A model without production here: follow it unless it was unloaded (by
        anyone: the serving flag is shared)."""
        try:
            return bool(await self.db(self._registry.is_serving, name))
        except LifecycleError:
            return False

    async def sync_policies(self) -> None:
        """Follow policy changes made elsewhere (the canary controller, another replica) and
        refresh bandit weights from the shared reward counts. Called periodically."""
        stored = await self.db(self._policies.list_policies)
        for served in self.models():
            policy = stored.get(served.name)
            current = served.policy
            if policy == current:
                if policy is not None and policy.bandit is not None and served.table is not None:
                    served.counts = await self.db(self._policies.bandit_counts,
                                                  policy.experiment_id)
                    served.table = served.table.with_counts(served.counts)
                continue
            async with served.lock:
                try:
                    for version in sorted(policy.versions() if policy else ()):
                        await self._ensure_loaded(served, version)
                except ModelLoadError as exc:
                    log.error("policy version failed to load", extra={
                        "event": "policy_load_failed", "model": served.name,
                        "reason": str(exc)})
                    continue
                await self._install_policy(served, policy)
            self.on_change(served.name)

    async def add_model(self, name: str, signature: Signature) -> ServedModel:
        return self._track(name, signature)

    async def close(self) -> None:
        """Stop serving everything (at shutdown). The stored policies are left alone: only
        this process's tables forget them, so unloading their versions is no error."""
        for served in self._models.values():
            served.production = None
            served.policy = None
            served.reroute()
            for version in list(served.versions):
                await self._retire(served, version)


def _rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, LifecycleError | ModelLoadError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
