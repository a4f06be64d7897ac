"""The seam between the control plane and serving: what lifecycle needs from a deployer.

``lifecycle`` never imports ``gateway``; the gateway's model manager satisfies
``Deployer`` structurally. Every method runs on the event loop that owns the serving
state; the async ones do their blocking work in the deployer's own executors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from lifecycle.domain import AliasChange, Signature

__all__ = ["LOAD_STATES", "Deployer", "ServingState", "VersionLoad"]

LOAD_STATES = ("not_loaded", "loaded", "failed")


@dataclass(frozen=True)
class VersionLoad:
    """What the serving process holds of one version.

    ``state`` is one of ``LOAD_STATES``; ``failure`` is the reason of the last failed
    load when ``state == "failed"``; ``warmup_p99_us`` and ``rss_bytes`` (the process's
    resident memory growth while it loaded and warmed) are 0 unless loaded.
    """

    model: str
    version: int
    state: str = "not_loaded"
    production: bool = False
    explicit: bool = False
    in_flight: int = 0
    failure: str = ""
    warmup_p99_us: float = 0.0
    rss_bytes: int = 0


@dataclass(frozen=True)
class ServingState:
    """What the serving process holds of one model: ``production`` is the version
    answering requests that name none (None if nothing serves); ``versions`` lists every
    loaded version and every version whose last load failed, ascending."""

    model: str
    production: int | None = None
    in_flight: int = 0
    versions: tuple[VersionLoad, ...] = ()

    def version(self, number: int) -> VersionLoad:
        """The load state of ``number`` (``not_loaded`` if this process holds nothing)."""
        for load in self.versions:
            if load.version == number:
                return load
        return VersionLoad(self.model, number)


@runtime_checkable
class Deployer(Protocol):
    """Loads, warms, swaps and drains versions; moves ``production`` only to a ready one.

    Failures raise the deployer's own errors (the admin layer maps them to a status);
    after any failure the previous production version is still serving and the alias
    is unmoved.
    """

    async def add_model(self, name: str, signature: Signature) -> Any:
        """Start tracking a model created in the registry (serves nothing yet)."""
        ...

    async def promote(self, model: str, version: int, *, actor: str) -> int | None:
        """Load and warm ``version``, move ``production`` to it, swap, drain the old one;
        returns the previous production version. Serialized per model with ``rollback``."""
        ...

    async def rollback(self, model: str, *, actor: str) -> AliasChange:
        """Load and warm the version ``production`` held before, move the alias back
        (compare-and-set), swap, drain. Serialized per model with ``promote``."""
        ...

    async def load_version(self, model: str, version: int, *, actor: str) -> Any:
        """Keep ``version`` loaded besides production (recorded, restored at start)."""
        ...

    async def unload_version(self, model: str, version: int, *, actor: str) -> None:
        """Forget an explicit load; unloads the version unless production needs it."""
        ...

    def serving_state(self, model: str) -> ServingState:
        """A snapshot of what is served of ``model`` (empty for an unknown model)."""
        ...
