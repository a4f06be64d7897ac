"""``[request_log]`` and ``[models.NAME.logging]``: defaults, fallbacks, errors naming file,
key and reason, and the engine configuration they produce."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.request_log.build import build_request_log, logging_policy, request_log_config
from gateway.settings import ConfigError, LoggingSettings, load_settings
from tests.onnx_models import logreg_like_model


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(logreg_like_model())
    return path


def test_defaults_log_everything_with_payloads(tmp_path: Path) -> None:
    settings = load_settings(None, env={}, overrides={"data_dir": tmp_path})
    rl = settings.request_log
    assert rl.enabled and rl.metadata_keys == ()
    assert (rl.queue_max, rl.batch_max, rl.flush_interval_ms) == (10_000, 500, 50.0)
    assert settings.effective_journal_dir == tmp_path / "request-log"
    assert settings.logging_of("anything") == LoggingSettings()
    config = request_log_config(settings)
    assert config.flush_interval_s == 0.05 and config.journal_budget_bytes == 512 << 20
    assert config.segment_bytes <= config.journal_budget_bytes // 4


def test_model_tables_override_the_request_log_defaults(tmp_path: Path, artifact: Path) -> None:
    path = write(tmp_path, f"""
[request_log]
queue_max = 100
queue_max_mb = 2
batch_max = 50
flush_interval_ms = 20
journal_budget_mb = 1
journal_dir = "journal"
metadata_keys = ["x-client-id", "x-tenant", "x-client-id"]
join_window_hours = 0.5
stop_timeout_s = 3
sample_rate = 0.5
capture_payload = false

[models.a]
artifact = "{artifact.name}"

[models.b]
artifact = "{artifact.name}"
[models.b.logging]
sample_rate = 1
capture_payload = true
max_payload_bytes = 0
retention_days = 7
""")
    settings = load_settings(path, env={})
    rl = settings.request_log
    assert rl.metadata_keys == ("x-client-id", "x-tenant")
    assert settings.effective_journal_dir == tmp_path / "journal"
    assert (rl.join_window_hours, rl.stop_timeout_s) == (0.5, 3.0)
    a, b = settings.logging_of("a"), settings.logging_of("b")
    assert (a.sample_rate, a.capture_payload, a.retention_days) == (0.5, False, 30.0)
    assert (b.sample_rate, b.capture_payload, b.max_payload_bytes, b.retention_days) == (
        1.0, True, 0, 7.0)
    assert settings.logging_of("not-in-the-file") == rl.defaults

    config = request_log_config(settings)
    assert (config.queue_max, config.queue_max_bytes, config.batch_max) == (100, 2 << 20, 50)
    assert config.flush_interval_s == pytest.approx(0.02)
    assert config.journal_budget_bytes == 1 << 20 and config.segment_bytes == 256 << 10
    engine = build_request_log(settings, sink=None, registry=CollectorRegistry())  # type: ignore[arg-type]
    assert engine.policy("b") == logging_policy(b)
    assert engine.policy("b").retention_s == 7 * 86400
    assert engine.policy("elsewhere") == logging_policy(rl.defaults)


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[request_log]\nenabled = 1\n", "request_log.enabled", "expected a boolean"),
    ("[request_log]\nqueue_max = 0\n", "request_log.queue_max", "positive"),
    ("[request_log]\nbatch_max = -1\n", "request_log.batch_max", "positive"),
    ("[request_log]\nflush_interval_ms = 0\n", "request_log.flush_interval_ms", "positive"),
    ("[request_log]\njournal_budget_mb = 'big'\n", "request_log.journal_budget_mb",
     "expected an integer or a number, got str"),
    ("[request_log]\nmetadata_keys = 'x-id'\n", "request_log.metadata_keys", "expected an array"),
    ("[request_log]\nmetadata_keys = ['X-Id']\n", "request_log.metadata_keys",
     "gRPC metadata keys"),
    ("[request_log]\nmetadata_keys = ['trace-bin']\n", "request_log.metadata_keys",
     "never logged"),
    ("[request_log]\nmetadata_keys = ['authorization']\n", "request_log.metadata_keys",
     "never logged"),
    ("[request_log]\njoin_window_hours = 0\n", "request_log.join_window_hours", "positive"),
    ("[request_log]\nsample_rate = 1.5\n", "request_log.sample_rate", "between 0 and 1"),
    ("[request_log]\nflush_interval = 5\n", "request_log.flush_interval", "unknown key"),
    ("[models.m.logging]\nsample_rate = -0.1\n", "models.m.logging.sample_rate",
     "between 0 and 1"),
    ("[models.m.logging]\ncapture_payload = 'yes'\n", "models.m.logging.capture_payload",
     "expected a boolean"),
    ("[models.m.logging]\nmax_payload_bytes = -1\n", "models.m.logging.max_payload_bytes",
     "non-negative"),
    ("[models.m.logging]\nmax_payload_bytes = 1.5\n", "models.m.logging.max_payload_bytes",
     "expected an integer"),
    ("[models.m.logging]\nretention_days = 0\n", "models.m.logging.retention_days", "positive"),
    ("[models.m.logging]\nretention = 3\n", "models.m.logging.retention", "unknown key"),
    ("[models.m]\nlogging = 3\n", "models.m.logging", "expected a table"),
])
def test_bad_logging_config_names_file_key_and_reason(tmp_path: Path, text: str, key: str,
                                                      reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.source == str(path)
    assert info.value.key == key
    assert reason in info.value.reason
