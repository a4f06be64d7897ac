"""Configuration: a TOML file, overridden by environment variables, overridden by flags.

The file seeds the database the first time a model is seen; after that the database is
authoritative (see README, "Configuration"). Every key is validated at start: unknown
keys, wrong types and impossible values raise ``ConfigError`` naming file, key and reason.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.datatypes import V2_TO_NUMPY
from gateway.lifecycle_settings import (
    LoopSettings,
    SettingError,
    parse_loop_settings,
    parse_model_lifecycle,
)
from lifecycle.loop_config import LifecycleConfig

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 256 * 1024 * 1024
ROLES = ("reader", "operator")
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
BOOTSTRAPS = ("synthetic_fraud",)
MIB = 1024 * 1024
# gRPC metadata keys are lower-case ASCII letters, digits, '-', '_' and '.'.
_METADATA_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class ConfigError(ValueError):
    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)


@dataclass(frozen=True, kw_only=True)
class TensorDecl:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class LoggingSettings:
    """What the request log keeps of one model (``[models.NAME.logging]``, defaulting to
    the same keys in ``[request_log]``). Read from the file at every start: the file, not
    the database, is where logging policy lives."""

    sample_rate: float = 1.0
    capture_payload: bool = True
    max_payload_bytes: int = MIB
    retention_days: float = 30.0


@dataclass(frozen=True, kw_only=True)
class RequestLogSettings:
    """``[request_log]``: the engine's bounds and the defaults of every model's logging."""

    enabled: bool = True
    queue_max: int = 10_000
    queue_max_mb: float = 64.0
    batch_max: int = 500
    flush_interval_ms: float = 50.0
    journal_budget_mb: float = 512.0
    journal_dir: Path | None = None
    metadata_keys: tuple[str, ...] = ()
    join_window_hours: float = 168.0
    stop_timeout_s: float = 10.0
    defaults: LoggingSettings = field(default_factory=LoggingSettings)


@dataclass(frozen=True, kw_only=True)
class BatchingSettings:
    """``[models.NAME.dynamic_batching]``, with Triton's semantics: a batch leaves when it
    reaches a preferred size (the largest configured, else ``max_batch_size``), or when
    its oldest request has waited ``max_queue_delay_us``. ``max_queue_size`` 0: bounded
    only by the model's ``max_inflight``."""

    max_batch_size: int
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    name: str
    artifact: Path | None = None
    bootstrap: str | None = None
    task: str = ""
    max_inflight: int = 1024
    inline_max_us: float | None = None
    warmup_iterations: int = 20
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    inputs: tuple[TensorDecl, ...] = ()
    outputs: tuple[TensorDecl, ...] = ()
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    # [models.NAME.lifecycle]: how the model retrains (None: it does not).
    lifecycle: LifecycleConfig | None = None
    # [models.NAME.dynamic_batching] (None: every request runs alone).
    dynamic_batching: BatchingSettings | None = None


@dataclass(frozen=True, kw_only=True)
class TokenSettings:
    name: str
    token: str
    role: str


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True, kw_only=True)
class TrafficSettings:
    """``[traffic]``: the shadow queue bound and the experiment loops' periods (s)."""

    shadow_queue_max: int = 1024
    canary_tick_s: float = 1.0
    bandit_update_s: float = 5.0
    policy_sync_s: float = 2.0


@dataclass(frozen=True, kw_only=True)
class WorkerRole:
    """This process is worker ``index`` of ``count`` under a ``gateway serve --workers``
    supervisor (``gateway.workers``). Worker 0 is the leader: it alone serves the admin
    port and runs the lifecycle and the experiment loops. ``metrics_dir`` holds every
    worker's metric files (``PROMETHEUS_MULTIPROC_DIR``), which the supervisor aggregates."""

    index: int
    count: int
    metrics_dir: Path

    @property
    def leader(self) -> bool:
        return self.index == 0


@dataclass(frozen=True, kw_only=True)
class Settings:
    source: str = "<defaults>"
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8002
    admin_port: int = 8003
    data_dir: Path = Path("var")
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_concurrent_rpcs: int = 1024
    inference_threads: int = 2
    inline_max_us: float = 200.0
    allow_repository_control: bool = False
    access_log_sample: float = 0.0
    uvloop: bool = False
    shutdown_grace_s: float = 5.0
    workers: int = 1
    port_file: Path | None = None
    replica_id: str | None = None
    database_url: str | None = None
    artifacts_dir: Path | None = None
    tokens: tuple[TokenSettings, ...] = ()
    tls: TlsSettings = field(default_factory=TlsSettings)
    request_log: RequestLogSettings = field(default_factory=RequestLogSettings)
    models: tuple[ModelSettings, ...] = ()
    lifecycle: LoopSettings = field(default_factory=LoopSettings)
    traffic: TrafficSettings = field(default_factory=TrafficSettings)
    # Set only inside a worker process (None: a single-process gateway, or the supervisor).
    worker: WorkerRole | None = None

    @property
    def leader(self) -> bool:
        """Serves the admin port and runs the lifecycle and experiment loops."""
        return self.worker is None or self.worker.leader

    @property
    def lifecycle_enabled(self) -> bool:
        """``[lifecycle] enabled``, by default on when any model has a lifecycle table;
        always off on a worker other than the leader (one process runs the lifecycle)."""
        if not self.leader:
            return False
        if self.lifecycle.enabled is not None:
            return self.lifecycle.enabled
        return any(m.lifecycle is not None for m in self.models)

    @property
    def effective_replica_id(self) -> str:
        """This process among the replicas and workers sharing the database: ``[server]
        replica_id`` (default ``host:pid``), with ``/w<i>`` for worker ``i`` of a
        ``--workers`` gateway."""
        base = self.replica_id or f"{socket.gethostname()}:{os.getpid()}"
        return base if self.worker is None else f"{base}/w{self.worker.index}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'gateway.db').resolve()}"

    @property
    def effective_journal_dir(self) -> Path:
        """The journal is single-writer: worker ``i`` > 0 has ``worker-<i>`` below the
        configured directory; the leader keeps the directory itself, as one process does,
        so switching ``workers`` never strands its journal."""
        base = self.request_log.journal_dir or self.data_dir / "request-log"
        if self.worker is not None and self.worker.index > 0:
            return base / f"worker-{self.worker.index}"
        return base

    def logging_of(self, model: str) -> LoggingSettings:
        """The model's logging settings: its own table, else the ``[request_log]`` ones."""
        found = self.model(model)
        return found.logging if found is not None else self.request_log.defaults

    @property
    def effective_artifacts_dir(self) -> Path:
        return self.artifacts_dir or self.data_dir / "artifacts"

    def model(self, name: str) -> ModelSettings | None:
        return next((m for m in self.models if m.name == name), None)


class _Reader:
    """Type-checked access to one TOML table; remembers which keys were used."""

    def __init__(self, source: str, prefix: str, table: Mapping[str, Any]) -> None:
        self.source, self.prefix, self.table = source, prefix, table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), reason)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(name, f"expected {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise self.fail(name, f"expected {_kind_name(kinds)}, got {type(value).__name__}")
        return value

    def port(self, name: str, default: int) -> int:
        value = self.get(name, int, default)
        if not 0 <= value <= 65535:
            raise self.fail(name, f"expected a port between 0 and 65535, got {value}")
        return int(value)

    def positive(self, name: str, kind: type, default: Any, *, allow_zero: bool = False) -> Any:
        value = self.get(name, (int, float) if kind is float else kind, default)
        if value is None:
            return None
        if value < 0 or (value == 0 and not allow_zero):
            expect = "a non-negative number" if allow_zero else "a positive number"
            raise self.fail(name, f"expected {expect}, got {value}")
        return kind(value)

    def table_of(self, name: str) -> Mapping[str, Any]:
        return self.get(name, dict, {})  # type: ignore[no-any-return]

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
             dict: "a table", list: "an array"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_settings(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from ``path`` (optional), then ``env``, then ``overrides`` (flags).

    Raises ``ConfigError`` on anything unknown, mistyped or impossible.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(source, "-", "file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "-", f"not valid TOML: {exc}") from exc
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    settings = _parse(source, raw, base_dir)
    settings = _apply_env(settings, env)
    if overrides:
        settings = _apply_overrides(settings, overrides)
    return settings


def _parse(source: str, raw: Mapping[str, Any], base_dir: Path) -> Settings:
    top = _Reader(source, "", raw)
    server = _Reader(source, "server", top.table_of("server"))
    database = _Reader(source, "database", top.table_of("database"))
    artifacts = _Reader(source, "artifacts", top.table_of("artifacts"))
    auth = _Reader(source, "auth", top.table_of("auth"))
    tls = _Reader(source, "tls", top.table_of("tls"))
    request_log = _parse_request_log(
        _Reader(source, "request_log", top.table_of("request_log")), base_dir
    )
    models_table = top.table_of("models")
    traffic = _Reader(source, "traffic", top.table_of("traffic"))
    try:
        loop = parse_loop_settings(top.table_of("lifecycle"), base_dir)
    except SettingError as exc:
        raise ConfigError(source, f"lifecycle.{exc.key}", exc.reason) from exc
    top.finish()

    def path_of(reader: _Reader, name: str) -> Path | None:
        value = reader.get(name, str, None)
        return None if value is None else (base_dir / value).resolve()

    data_dir_value = server.get("data_dir", str, None)
    settings = Settings(
        source=source,
        host=server.get("host", str, "127.0.0.1"),
        grpc_port=server.port("grpc_port", 8001),
        http_port=server.port("http_port", 8002),
        admin_port=server.port("admin_port", 8003),
        data_dir=(base_dir / data_dir_value) if data_dir_value else Path("var"),
        max_message_bytes=server.positive("max_message_bytes", int, DEFAULT_MAX_MESSAGE_BYTES),
        max_upload_bytes=server.positive("max_upload_bytes", int, DEFAULT_MAX_UPLOAD_BYTES),
        max_concurrent_rpcs=server.positive("max_concurrent_rpcs", int, 1024),
        inference_threads=server.positive("inference_threads", int, 2),
        inline_max_us=server.positive("inline_max_us", float, 200.0, allow_zero=True),
        allow_repository_control=server.get("allow_repository_control", bool, False),
        access_log_sample=_fraction(server, "access_log_sample", 0.0),
        uvloop=server.get("uvloop", bool, False),
        shutdown_grace_s=server.positive("shutdown_grace_s", float, 5.0, allow_zero=True),
        workers=server.positive("workers", int, 1),
        replica_id=_replica_id(server),
        database_url=database.get("url", str, None),
        artifacts_dir=path_of(artifacts, "root"),
        tokens=_parse_tokens(source, auth),
        tls=TlsSettings(
            cert=path_of(tls, "cert"), key=path_of(tls, "key"), client_ca=path_of(tls, "client_ca")
        ),
        request_log=request_log,
        lifecycle=loop,
        traffic=TrafficSettings(
            shadow_queue_max=traffic.positive("shadow_queue_max", int, 1024),
            canary_tick_s=traffic.positive("canary_tick_s", float, 1.0),
            bandit_update_s=traffic.positive("bandit_update_s", float, 5.0),
            policy_sync_s=traffic.positive("policy_sync_s", float, 2.0),
        ),
        models=tuple(
            _parse_model(source, name, table, base_dir, request_log.defaults)
            for name, table in models_table.items()
        ),
    )
    for reader in (server, database, artifacts, auth, tls, traffic):
        reader.finish()
    for model in settings.models:
        if model.lifecycle is not None and not model.lifecycle.estimator.startswith(
                loop.allowed_estimators):
            raise ConfigError(source, f"models.{model.name}.lifecycle.estimator",
                              f"'{model.lifecycle.estimator}' is outside [lifecycle] "
                              f"allowed_estimators {list(loop.allowed_estimators)}")
    if (settings.tls.cert is None) != (settings.tls.key is None):
        raise ConfigError(source, "tls", "cert and key must be given together")
    return settings


def _replica_id(reader: _Reader) -> str | None:
    value = reader.get("replica_id", str, None)
    if value is not None and not 0 < len(value) <= 120:
        raise reader.fail("replica_id", f"expected 1 to 120 characters, got {len(value)}")
    return value


def _fraction(reader: _Reader, name: str, default: float) -> float:
    value = float(reader.get(name, (int, float), default))
    if not 0.0 <= value <= 1.0:
        raise reader.fail(name, f"expected a fraction between 0 and 1, got {value}")
    return value


def _parse_logging(reader: _Reader, defaults: LoggingSettings) -> LoggingSettings:
    """The policy keys of ``reader`` (``[request_log]`` or ``[models.NAME.logging]``)."""
    retention = reader.positive("retention_days", float, defaults.retention_days)
    return LoggingSettings(
        sample_rate=_fraction(reader, "sample_rate", defaults.sample_rate),
        capture_payload=reader.get("capture_payload", bool, defaults.capture_payload),
        max_payload_bytes=reader.positive("max_payload_bytes", int, defaults.max_payload_bytes,
                                          allow_zero=True),
        retention_days=retention,
    )


def _parse_request_log(reader: _Reader, base_dir: Path) -> RequestLogSettings:
    keys = reader.get("metadata_keys", list, [])
    for key in keys:
        if not isinstance(key, str) or not key or not set(key) <= _METADATA_KEY_CHARS:
            raise reader.fail("metadata_keys", "expected an array of gRPC metadata keys "
                              f"(lower-case letters, digits, '-', '_', '.'), got {key!r}")
        if key.endswith("-bin") or key == "authorization":
            raise reader.fail("metadata_keys", f"'{key}' cannot be captured (binary "
                              "metadata and credentials are never logged)")
    journal_dir = reader.get("journal_dir", str, None)
    settings = RequestLogSettings(
        enabled=reader.get("enabled", bool, True),
        queue_max=reader.positive("queue_max", int, 10_000),
        queue_max_mb=reader.positive("queue_max_mb", float, 64.0),
        batch_max=reader.positive("batch_max", int, 500),
        flush_interval_ms=reader.positive("flush_interval_ms", float, 50.0),
        journal_budget_mb=reader.positive("journal_budget_mb", float, 512.0),
        journal_dir=(base_dir / journal_dir).resolve() if journal_dir else None,
        metadata_keys=tuple(dict.fromkeys(keys)),
        join_window_hours=reader.positive("join_window_hours", float, 168.0),
        stop_timeout_s=reader.positive("stop_timeout_s", float, 10.0, allow_zero=True),
        defaults=_parse_logging(reader, LoggingSettings()),
    )
    reader.finish()
    return settings


def _parse_tokens(source: str, auth: _Reader) -> tuple[TokenSettings, ...]:
    tokens_table = auth.table_of("tokens")
    tokens = []
    for name, table in tokens_table.items():
        if not isinstance(table, dict):
            raise ConfigError(source, f"auth.tokens.{name}", "expected a table")
        reader = _Reader(source, f"auth.tokens.{name}", table)
        token = reader.get("token", str, None)
        if not token:
            raise reader.fail("token", "expected a non-empty string")
        role = reader.get("role", str, "reader")
        if role not in ROLES:
            raise reader.fail("role", f"expected one of {', '.join(ROLES)}, got '{role}'")
        reader.finish()
        tokens.append(TokenSettings(name=name, token=token, role=role))
    return tuple(tokens)


def _parse_tensors(source: str, prefix: str, value: Any) -> tuple[TensorDecl, ...]:
    if not isinstance(value, list):
        raise ConfigError(source, prefix, "expected an array of tables")
    tensors = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConfigError(source, f"{prefix}[{i}]", "expected a table")
        reader = _Reader(source, f"{prefix}[{i}]", item)
        name = reader.get("name", str, "")
        if not name:
            raise reader.fail("name", "expected a non-empty string")
        datatype = reader.get("datatype", str, "")
        if datatype not in V2_TO_NUMPY:
            raise reader.fail(
                "datatype", f"expected one of {', '.join(V2_TO_NUMPY)}, got '{datatype}'"
            )
        shape = reader.get("shape", list, [])
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
            raise reader.fail("shape", f"expected integers >= -1 (-1 is dynamic), got {shape}")
        reader.finish()
        tensors.append(TensorDecl(name=name, datatype=datatype, shape=tuple(shape)))
    return tuple(tensors)


def _parse_lifecycle(source: str, prefix: str, table: Mapping[str, Any]) -> LifecycleConfig:
    try:
        return parse_model_lifecycle(table)
    except SettingError as exc:
        raise ConfigError(source, f"{prefix}.lifecycle.{exc.key}", exc.reason) from exc


def _parse_batching(source: str, prefix: str, table: Any,
                    inputs: tuple[TensorDecl, ...]) -> BatchingSettings:
    """``[models.NAME.dynamic_batching]``; declared inputs must have a dynamic first dim."""
    if not isinstance(table, dict):
        raise ConfigError(source, f"{prefix}.dynamic_batching", "expected a table")
    reader = _Reader(source, f"{prefix}.dynamic_batching", table)
    if "max_batch_size" not in table:
        raise reader.fail("max_batch_size", "required: a positive integer")
    max_batch = reader.positive("max_batch_size", int, 0)
    delay = reader.positive("max_queue_delay_us", int, 0, allow_zero=True)
    preferred = reader.get("preferred_batch_sizes", list, [])
    for size in preferred:
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= max_batch:
            raise reader.fail("preferred_batch_sizes", "expected integers between 1 and "
                              f"max_batch_size ({max_batch}), got {size!r}")
    if len(set(preferred)) != len(preferred):
        raise reader.fail("preferred_batch_sizes", f"expected distinct sizes, got {preferred}")
    settings = BatchingSettings(
        max_batch_size=max_batch, max_queue_delay_us=delay,
        preferred_batch_sizes=tuple(sorted(preferred)),
        max_queue_size=reader.positive("max_queue_size", int, 0, allow_zero=True),
    )
    reader.finish()
    for tensor in inputs:
        if not tensor.shape or tensor.shape[0] != -1:
            raise ConfigError(source, f"{prefix}.dynamic_batching",
                              f"input '{tensor.name}' has shape {list(tensor.shape)}: batching "
                              "needs a dynamic first (batch) dimension, -1, on every input")
    return settings


def _parse_model(source: str, name: str, table: Any, base_dir: Path,
                 logging_defaults: LoggingSettings) -> ModelSettings:
    prefix = f"models.{name}"
    if not isinstance(table, dict):
        raise ConfigError(source, prefix, "expected a table")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(source, prefix, "model names use letters, digits, '-', '_' and '.'")
    reader = _Reader(source, prefix, table)
    artifact = reader.get("artifact", str, None)
    bootstrap = reader.get("bootstrap", str, None)
    if bootstrap is not None and bootstrap not in BOOTSTRAPS:
        raise reader.fail(
            "bootstrap", f"expected one of {', '.join(BOOTSTRAPS)}, got '{bootstrap}'"
        )
    runtime_reader = _Reader(source, f"{prefix}.runtime", reader.table_of("runtime"))
    optimization = runtime_reader.get("graph_optimization", str, "all")
    if optimization not in GRAPH_OPTIMIZATIONS:
        raise runtime_reader.fail(
            "graph_optimization",
            f"expected one of {', '.join(GRAPH_OPTIMIZATIONS)}, got '{optimization}'",
        )
    providers = runtime_reader.get("execution_providers", list, ["CPUExecutionProvider"])
    if not providers or not all(isinstance(p, str) for p in providers):
        raise runtime_reader.fail("execution_providers", "expected a non-empty array of strings")
    runtime = RuntimeOptions(
        intra_op_threads=runtime_reader.positive("intra_op_threads", int, 1),
        inter_op_threads=runtime_reader.positive("inter_op_threads", int, 1),
        graph_optimization=optimization,
        execution_providers=tuple(providers),
    )
    runtime_reader.finish()
    logging_reader = _Reader(source, f"{prefix}.logging", reader.table_of("logging"))
    logging = _parse_logging(logging_reader, logging_defaults)
    logging_reader.finish()
    lifecycle = reader.get("lifecycle", dict, None)
    inputs = _parse_tensors(source, f"{prefix}.inputs", reader.get("inputs", list, []))
    batching = reader.get("dynamic_batching", dict, None)
    settings = ModelSettings(
        name=name,
        artifact=(base_dir / artifact).resolve() if artifact else None,
        bootstrap=bootstrap,
        task=reader.get("task", str, ""),
        max_inflight=reader.positive("max_inflight", int, 1024),
        inline_max_us=reader.positive("inline_max_us", float, None, allow_zero=True),
        warmup_iterations=reader.positive("warmup_iterations", int, 20),
        runtime=runtime,
        inputs=inputs,
        outputs=_parse_tensors(source, f"{prefix}.outputs", reader.get("outputs", list, [])),
        logging=logging,
        lifecycle=None if lifecycle is None else _parse_lifecycle(source, prefix, lifecycle),
        dynamic_batching=(None if batching is None
                          else _parse_batching(source, prefix, batching, inputs)),
    )
    reader.finish()
    if settings.artifact is not None and not settings.artifact.is_file():
        raise ConfigError(source, f"{prefix}.artifact", f"file not found: {settings.artifact}")
    return settings


_ENV_KEYS: dict[str, tuple[str, type]] = {
    "GATEWAY_HOST": ("host", str),
    "GATEWAY_GRPC_PORT": ("grpc_port", int),
    "GATEWAY_HTTP_PORT": ("http_port", int),
    "GATEWAY_ADMIN_PORT": ("admin_port", int),
    "GATEWAY_DATA_DIR": ("data_dir", Path),
    "GATEWAY_DATABASE_URL": ("database_url", str),
}


def _apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    changes: dict[str, Any] = {}
    for var, (attr, kind) in _ENV_KEYS.items():
        if var in env and env[var] != "":
            try:
                changes[attr] = kind(env[var])
            except ValueError as exc:
                raise ConfigError("environment", var, f"expected {kind.__name__}") from exc
    tokens = settings.tokens
    admin_token = env.get("GATEWAY_ADMIN_TOKEN")
    if admin_token:
        tokens = (*tokens, TokenSettings(name="env", token=admin_token, role="operator"))
    return replace(settings, tokens=tokens, **changes)


def _apply_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    changes = {k: v for k, v in overrides.items() if v is not None}
    for key in ("grpc_port", "http_port", "admin_port"):
        if key in changes and not 0 <= changes[key] <= 65535:
            raise ConfigError("command line", key, f"expected a port, got {changes[key]}")
    if "workers" in changes and changes["workers"] < 1:
        raise ConfigError("command line", "workers",
                          f"expected a positive number of processes, got {changes['workers']}")
    return replace(settings, **changes)
