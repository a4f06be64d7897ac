"""What is served of one model: its loaded versions, production, policy and routing table.

Mutated on the event loop thread only, under the model's lock for anything that awaits.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from gateway.batching import Batcher
from gateway.errors import NotReady
from gateway.metrics import VersionMetrics
from gateway.routing import RoutingTable, build_table
from gateway.runtime import OnnxModel, WarmupReport
from gateway.settings import ModelSettings
from gateway.stats import VersionStats
from lifecycle.domain import Signature
from lifecycle.traffic import Policy, RewardCounts

log = logging.getLogger("gateway.models")


@dataclass(eq=False)
class LoadedVersion:
    model: str
    version: int
    onnx: OnnxModel
    inline: bool
    warmup: WarmupReport
    stats: VersionStats
    metrics: VersionMetrics
    inflight: int = 0
    draining: bool = False
    _drained: asyncio.Event | None = None
    # Dynamic batching (None: each request runs alone).
    batcher: Batcher | None = None
    # The process's RSS growth while this version loaded and warmed (approximate).
    rss_bytes: int = 0

    def __post_init__(self) -> None:
        self.label = str(self.version)

    def release(self) -> None:
        """Called when a request leaves; wakes a pending drain at zero."""
        self.inflight -= 1
        if self.draining and self.inflight == 0 and self._drained is not None:
            self._drained.set()

    async def drain(self) -> None:
        self.draining = True
        if self.batcher is not None:
            self.batcher.close()  # queued requests leave now rather than after their delay
        if self.inflight:
            self._drained = asyncio.Event()
            await self._drained.wait()


@dataclass(eq=False)
class ServedModel:
    name: str
    settings: ModelSettings
    signature: Signature
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    by_label: dict[str, LoadedVersion] = field(default_factory=dict)
    production: LoadedVersion | None = None
    explicit: set[int] = field(default_factory=set)
    failures: dict[int, str] = field(default_factory=dict)
    policy: Policy | None = None
    counts: dict[int, RewardCounts] = field(default_factory=dict)
    table: RoutingTable[LoadedVersion] | None = None
    inflight: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def needed(self) -> set[int]:
        """Versions that must stay loaded: production, the policy's and explicit loads."""
        keep = set(self.explicit)
        if self.production is not None:
            keep.add(self.production.version)
        if self.policy is not None:
            keep |= self.policy.versions()
        return keep

    def reroute(self) -> None:
        """Rebuild the label and routing tables, each replaced in one assignment: a request
        sees the old table or the new one, never a mix.

        Call after every change of versions, production, explicit loads or policy, and
        before draining a version that left (so no new request is routed to it).
        """
        self.by_label = {v.label: v for v in self.versions.values()}
        production = self.production.version if self.production is not None else None
        try:
            self.table = build_table(
                self.name, self.policy, production=production, handles=self.versions,
                explicit=self.explicit, counts=self.counts,
            )
        except NotReady as exc:
            # A policy version is not loaded (e.g. it failed): serve production alone
            # rather than a stale table.
            log.error("policy cannot be routed; serving production only", extra={
                "event": "policy_unroutable", "model": self.name, "reason": str(exc)})
            self.table = build_table(self.name, None, production=production,
                                     handles=self.versions, explicit=self.explicit)
