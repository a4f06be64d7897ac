"""The admin port and upload limit in configuration, environment and flags."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import DEFAULT_MAX_UPLOAD_BYTES, ConfigError, load_settings


def test_defaults() -> None:
    settings = load_settings(None, env={})
    assert settings.admin_port == 8003
    assert settings.max_upload_bytes == DEFAULT_MAX_UPLOAD_BYTES == 256 * 1024 * 1024


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text("[server]\nadmin_port = 9100\nmax_upload_bytes = 1000\n")
    assert load_settings(config, env={}).admin_port == 9100
    assert load_settings(config, env={}).max_upload_bytes == 1000
    assert load_settings(config, env={"GATEWAY_ADMIN_PORT": "9200"}).admin_port == 9200
    flagged = load_settings(config, env={"GATEWAY_ADMIN_PORT": "9200"},
                            overrides={"admin_port": 0})
    assert flagged.admin_port == 0


@pytest.mark.parametrize(("text", "message"), [
    ("admin_port = 'x'", "server.admin_port: expected an integer"),
    ("admin_port = 70000", "server.admin_port"),
    ("max_upload_bytes = 0", "server.max_upload_bytes: expected a positive number"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "g.toml"
    config.write_text(f"[server]\n{text}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(config, env={})


def test_bad_flag_and_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="admin_port: expected a port"):
        load_settings(None, env={}, overrides={"admin_port": 70000})
    with pytest.raises(ConfigError, match="GATEWAY_ADMIN_PORT"):
        load_settings(None, env={"GATEWAY_ADMIN_PORT": "eighty"})


def test_busy_admin_port_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--grpc-port", "0", "--http-port", "0",
             "--admin-port", str(port), "--data-dir", str(tmp_path / "d")],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"cannot bind 127.0.0.1:{port}" in result.stderr
