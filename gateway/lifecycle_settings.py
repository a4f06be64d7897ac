"""The lifecycle's configuration keys: ``[lifecycle]`` (the loop's machinery) and each
model's ``[models.NAME.lifecycle]`` (how that model retrains).

``gateway.settings`` calls the two parsers and turns a ``SettingError`` into its
``ConfigError`` naming the file, the full dotted key and the reason. A model's table is
parsed by ``lifecycle.loop_config.LifecycleConfig.from_dict``, the same parser the stored
trigger lists go through; its ``triggers`` only seed the database the first time (after
that the ``triggers`` table rules, changed with ``gateway triggers set``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.loop_config import LifecycleConfig
from lifecycle.loop_errors import LifecycleConfigError

__all__ = ["LoopSettings", "SettingError", "parse_loop_settings", "parse_model_lifecycle"]


class SettingError(ValueError):
    """``key`` is relative to the table being parsed; ``reason`` says what is wrong."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """``[lifecycle]``. ``enabled`` None means: on when any model has a lifecycle table.

    ``poll_s``: how often the scheduler re-reads the trigger tables; ``max_concurrent_runs``:
    runs at once across models (one per model always); ``nice``: the training process's
    priority increment; ``train_cpu_share``: the share of one core the training process
    may use (a duty cycle: it is stopped for the rest of every 100 ms); ``workdir``: where
    training children get their files (default ``<data_dir>/training``);
    ``stale_after_s``/``sweep_every_s``: a run whose heartbeat stopped that long is
    failed, checked that often; ``purge_every_s``: the request-log
    retention purge; ``promote_timeout_s``: the longest a promotion or canary start may take;
    ``allowed_estimators``: dotted-path prefixes an estimator must start with;
    ``leader_lease_s``: the control lease between replicas on one database
    (``lifecycle.leases``): renewed every quarter of it, taken over after it lapses.
    """

    enabled: bool | None = None
    poll_s: float = 5.0
    max_concurrent_runs: int = 1
    nice: int = 10
    train_cpu_share: float = 0.5
    workdir: Path | None = None
    stale_after_s: float = 60.0
    sweep_every_s: float = 15.0
    purge_every_s: float = 3600.0
    promote_timeout_s: float = 300.0
    leader_lease_s: float = 10.0
    allowed_estimators: tuple[str, ...] = ("sklearn.",)


_NUMBERS = ("poll_s", "stale_after_s", "sweep_every_s", "purge_every_s", "promote_timeout_s",
            "leader_lease_s")


def parse_loop_settings(table: Mapping[str, Any], base_dir: Path) -> LoopSettings:
    """``[lifecycle]`` as read from TOML; ``SettingError`` on anything unknown or wrong."""
    known = {"enabled", "max_concurrent_runs", "nice", "train_cpu_share", "workdir",
             "allowed_estimators", *_NUMBERS}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SettingError(unknown[0], "unknown key")
    values: dict[str, Any] = {}
    enabled = table.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise SettingError("enabled", f"expected a boolean, got {enabled!r}")
    values["enabled"] = enabled
    for name in _NUMBERS:
        if name in table:
            value = table[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value > 0):
                raise SettingError(name, f"expected a positive number, got {value!r}")
            values[name] = float(value)
    if "train_cpu_share" in table:
        share = table["train_cpu_share"]
        if isinstance(share, bool) or not isinstance(share, int | float) or not (
                0.0 < share <= 1.0):
            raise SettingError("train_cpu_share", f"expected a number within (0, 1], got "
                                                  f"{share!r}")
        values["train_cpu_share"] = float(share)
    for name, low, high in (("max_concurrent_runs", 1, 64), ("nice", 0, 19)):
        if name in table:
            value = table[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SettingError(name, f"expected an integer within {low}..{high}, got "
                                         f"{value!r}")
            values[name] = value
    if "workdir" in table:
        if not isinstance(table["workdir"], str) or not table["workdir"]:
            raise SettingError("workdir", f"expected a path, got {table['workdir']!r}")
        values["workdir"] = (base_dir / table["workdir"]).resolve()
    if "allowed_estimators" in table:
        prefixes = table["allowed_estimators"]
        if not isinstance(prefixes, list) or not prefixes or not all(
                isinstance(p, str) and p.endswith(".") and len(p) > 1 for p in prefixes):
            raise SettingError("allowed_estimators", "expected a non-empty array of module "
                               f"prefixes ending in '.', got {prefixes!r}")
        values["allowed_estimators"] = tuple(prefixes)
    return LoopSettings(**values)


def parse_model_lifecycle(table: Any) -> LifecycleConfig:
    """A model's ``lifecycle`` table; ``SettingError`` whose key is relative to it."""
    if not isinstance(table, Mapping):
        raise SettingError("", f"expected a table, got {type(table).__name__}")
    try:
        return LifecycleConfig.from_dict(table)
    except LifecycleConfigError as exc:
        reason = str(exc).removeprefix(f"lifecycle.{exc.key}: ")
        raise SettingError(exc.key, reason) from exc
