"""Deploying a candidate that passed its gates, by the model's deploy policy.

- ``manual``: nothing; the version stays ``registered`` for an operator to promote.
- ``direct``: ``Deployer.promote`` (load, warm, move ``production``, drain the old one).
- ``shadow``: install a policy mirroring ``shadow_fraction`` of the champion's traffic to
  the candidate, wait until ``shadow_min_requests`` mirrored requests were compared
  (``AgreementSource``), remove the policy, then promote when the agreement is at least
  ``min_agreement`` — otherwise, or when ``shadow_timeout_s`` passes first, mark the
  version ``rejected`` with the reason.
- ``canary``: start the canary controller's ramp; the controller (ticked by the app)
  promotes or aborts it later, and an abort marks the version ``rejected`` itself.

Without a champion there is nothing to compare with: ``shadow`` and ``canary`` promote
directly. The deployer's coroutines run on the serving loop through an ``AsyncBridge``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import numpy as np

from lifecycle.canary import CanaryController
from lifecycle.deployer import Deployer
from lifecycle.errors import LifecycleError
from lifecycle.loop_config import DeployConfig
from lifecycle.loop_errors import DeployFailed, RunCancelled
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.request_records import LoggedRequest
from lifecycle.request_store import RequestStore
from lifecycle.traffic import Policy, Shadow

__all__ = [
    "Agreement",
    "AgreementSource",
    "AsyncBridge",
    "DeployResult",
    "LoopBridge",
    "OwnLoopBridge",
    "RequestLogAgreement",
    "Rollout",
]

T = TypeVar("T")


class AsyncBridge(Protocol):
    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` to completion from a non-loop thread; raise what it raises
        (``TimeoutError`` after ``timeout_s``)."""
        ...


class LoopBridge:
    """Runs coroutines on ``loop`` (the serving loop, running in another thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise


class OwnLoopBridge:
    """Runs each coroutine on a fresh event loop in the calling thread (tools and tests
    whose deployer is not bound to a serving loop)."""

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        return asyncio.run(asyncio.wait_for(coro, timeout_s))


@dataclass(frozen=True)
class Agreement:
    """Mirrored requests whose shadow output could be compared with the primary's."""

    compared: int = 0
    agreed: int = 0

    @property
    def rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


class AgreementSource(Protocol):
    def agreement(self, model: str, version: int, since_us: int) -> Agreement:
        """How often ``version``'s shadow outputs agreed with the primary outputs for the
        same requests, over requests logged at or after ``since_us``. May block."""
        ...


class RequestLogAgreement:
    """``AgreementSource`` over the request log: shadow records of ``version`` joined
    with the primary record of the same request id. Two outputs agree when their integer
    outputs (class labels) are equal — or, without any, the argmax of a 2-D score output,
    or else all floating outputs within 1e-3 relative."""

    def __init__(self, store: RequestStore, *, limit: int = 100_000) -> None:
        self._store = store
        self._limit = limit

    def agreement(self, model: str, version: int, since_us: int) -> Agreement:
        primary: dict[str, LoggedRequest] = {}
        shadows: list[LoggedRequest] = []
        for record in self._store.query_requests(model, since=since_us, limit=self._limit):
            if not record.request_id or not record.payload_captured:
                continue
            if record.shadow and record.version == version:
                shadows.append(record)
            elif not record.shadow:
                primary[record.request_id] = record
        compared = agreed = 0
        for shadow in shadows:
            match = primary.get(shadow.request_id)
            if match is None or not match.outputs or not shadow.outputs:
                continue
            compared += 1
            agreed += _agree(match, shadow)
        return Agreement(compared, agreed)


def _agree(primary: LoggedRequest, shadow: LoggedRequest) -> bool:
    mine = {t.name: t.to_numpy() for t in primary.outputs}
    theirs = {t.name: t.to_numpy() for t in shadow.outputs}
    common = [n for n in mine if n in theirs]
    integer = [n for n in common if mine[n].dtype.kind in "biu"]
    if integer:
        return all(np.array_equal(mine[n], theirs[n]) for n in integer)
    scores = [n for n in common if mine[n].ndim == 2 and mine[n].shape == theirs[n].shape]
    if scores:
        n = scores[0]
        return bool(np.array_equal(mine[n].argmax(axis=1), theirs[n].argmax(axis=1)))
    return all(mine[n].shape == theirs[n].shape and np.allclose(mine[n], theirs[n], rtol=1e-3)
               for n in common)


@dataclass(frozen=True)
class DeployResult:
    """``outcome``: ``registered`` (manual), ``promoted``, ``canary`` (ramp started) or
    ``rejected`` (shadow check failed)."""

    outcome: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


class Rollout:
    """Applies a ``DeployConfig`` to a registered candidate; see the module docstring.

    Collaborators a policy does not need may be None; a policy missing one raises
    ``DeployFailed``. ``poll_s`` paces the shadow wait.
    """

    def __init__(
        self, registry: Registry, *, deployer: Deployer | None = None,
        bridge: AsyncBridge | None = None, canary: CanaryController | None = None,
        policies: PolicyStore | None = None, agreement: AgreementSource | None = None,
        clock: Callable[[], datetime], actor: str = "lifecycle", poll_s: float = 1.0,
        promote_timeout_s: float = 300.0,
    ) -> None:
        self._registry = registry
        self._deployer = deployer
        self._bridge = bridge or OwnLoopBridge()
        self._canary = canary
        self._policies = policies
        self._agreement = agreement
        self._clock = clock
        self._actor = actor
        self._poll_s = poll_s
        self._promote_timeout_s = promote_timeout_s

    def deploy(
        self, model: str, version: int, champion: int | None, config: DeployConfig, *,
        cancel: threading.Event | None = None, heartbeat: Callable[[], None] | None = None,
    ) -> DeployResult:
        policy = config.policy
        if policy == "manual":
            return DeployResult("registered", "deploy policy is manual: promote it by hand")
        if policy == "direct" or champion is None:
            why = ("deploy policy is direct" if policy == "direct"
                   else f"no champion to {policy} against")
            return self._promote(model, version, why)
        if policy == "canary":
            return self._start_canary(model, version, config)
        return self._shadow(model, version, champion, config, cancel or threading.Event(),
                            heartbeat or (lambda: None))

    def _promote(self, model: str, version: int, why: str) -> DeployResult:
        if self._deployer is None:
            raise DeployFailed("promotion needs a deployer, and none is configured")
        try:
            previous = self._bridge.run(
                self._deployer.promote(model, version, actor=self._actor),
                self._promote_timeout_s)
        except Exception as exc:
            raise DeployFailed(f"promotion of version {version} failed: {exc}") from exc
        return DeployResult("promoted", f"promoted ({why})", {"previous": previous})

    def _start_canary(self, model: str, version: int, config: DeployConfig) -> DeployResult:
        if self._canary is None:
            raise DeployFailed("deploy policy canary needs the canary controller")
        spec = config.canary_spec(version)
        try:
            state = self._bridge.run(
                self._canary.start(model, spec, actor=self._actor, now=self._clock()),
                self._promote_timeout_s)
        except Exception as exc:
            raise DeployFailed(f"the canary of version {version} did not start: {exc}") from exc
        return DeployResult("canary", f"canary started at {state.share:g}%", {
            "experiment_id": state.experiment_id, "champion": state.champion,
            "spec": spec.to_json()})

    def _shadow(
        self, model: str, version: int, champion: int, config: DeployConfig,
        cancel: threading.Event, heartbeat: Callable[[], None],
    ) -> DeployResult:
        if self._policies is None or self._agreement is None:
            raise DeployFailed("deploy policy shadow needs the policy store and an "
                               "agreement source")
        since_us = int(self._clock().timestamp() * 1e6)
        try:
            installed = self._policies.set_policy(model, Policy.split(
                {champion: 100.0}, shadows=[Shadow(version, config.shadow_fraction)]),
                actor=self._actor)
        except LifecycleError as exc:
            raise DeployFailed(f"the shadow policy was not installed: {exc}") from exc
        deadline = time.monotonic() + config.shadow_timeout_s
        seen = Agreement()
        try:
            while True:
                seen = self._agreement.agreement(model, version, since_us)
                heartbeat()
                if seen.compared >= config.shadow_min_requests or time.monotonic() >= deadline:
                    break
                if cancel.wait(self._poll_s):
                    raise RunCancelled("cancelled during the shadow check")
        finally:
            current = self._policies.get_policy(model)
            if current is not None and current.experiment_id == installed.experiment_id:
                self._policies.clear_policy(model, actor=self._actor)
        detail = {"compared": seen.compared, "agreed": seen.agreed, "agreement": seen.rate,
                  "experiment_id": installed.experiment_id}
        if seen.compared < config.shadow_min_requests:
            why = (f"shadow check timed out after {config.shadow_timeout_s:g} s with "
                   f"{seen.compared}/{config.shadow_min_requests} compared requests")
        elif (seen.rate or 0.0) < config.min_agreement:
            why = (f"shadow agreement {seen.rate:.4f} below {config.min_agreement:g} over "
                   f"{seen.compared} requests")
        else:
            result = self._promote(model, version, f"shadow agreement {seen.rate:.4f} over "
                                   f"{seen.compared} requests")
            return DeployResult(result.outcome, result.reason, {**result.detail, **detail})
        self._registry.set_status(model, version, "rejected", actor=self._actor, reason=why)
        return DeployResult("rejected", why, detail)
