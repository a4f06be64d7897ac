"""Per-model logging policy: sampling, payload capture and retention."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["LoggingPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingPolicy:
    """What the request log keeps for one model (``[models.NAME.logging]``).

    ``sample_rate`` (0–1) is the share of inferences logged, drawn per request by
    ``RequestLog.log``; feedback is never sampled. With ``capture_payload`` off, or when a
    record's encoded tensors exceed ``max_payload_bytes``, the record is logged without
    tensors (``payload_dropped`` marks the second case). ``retention_s`` is how long
    records are kept (applied by whoever calls ``RequestStore.purge_before``).
    Raises ``ValueError`` for values out of range.
    """

    sample_rate: float = 1.0
    capture_payload: bool = True
    max_payload_bytes: int = 1 << 20
    retention_s: float = 30 * 86400.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within 0 and 1, got {self.sample_rate}")
        if self.max_payload_bytes < 0:
            raise ValueError(
                f"max_payload_bytes must not be negative, got {self.max_payload_bytes}"
            )
        if self.retention_s <= 0:
            raise ValueError(f"retention_s must be positive, got {self.retention_s}")

    def should_log(self, rng: random.Random) -> bool:
        """One sampling draw (no draw at all at rate 0 or 1)."""
        rate = self.sample_rate
        if rate >= 1.0:
            return True
        return rate > 0.0 and rng.random() < rate
