"""Helpers shared by the lifecycle tests."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta
from typing import Any

from lifecycle.registry import Registry


class StepClock:
    """A clock that advances one second per reading; thread-safe."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=1)
            return self._now


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def register(registry: Registry, model: str, payload: bytes, **kwargs: Any) -> int:
    """Register ``payload`` as a version of ``model``; returns its number."""
    version, _ = registry.register_version(
        model, sha256=sha(payload), size=len(payload), actor="test", **kwargs
    )
    return version.version
