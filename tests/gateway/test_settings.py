"""Configuration: precedence and errors that name file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, env={})
    assert (settings.host, settings.grpc_port, settings.http_port) == ("127.0.0.1", 8001, 8002)
    assert settings.max_message_bytes == 64 * 1024 * 1024
    assert settings.effective_database_url.endswith("var/gateway.db")


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\ngrpc_port = 9001\nhttp_port = 9002\nhost = '127.0.0.2'\n"
                           "[database]\nurl = 'sqlite:///file.db'\n")
    settings = load_settings(path, env={"GATEWAY_GRPC_PORT": "9101",
                                        "GATEWAY_DATABASE_URL": "sqlite:///env.db"},
                             overrides={"grpc_port": 9201, "http_port": None})
    assert settings.grpc_port == 9201
    assert settings.http_port == 9002
    assert settings.host == "127.0.0.2"
    assert settings.database_url == "sqlite:///env.db"


def test_admin_token_from_environment_is_an_operator_named_env() -> None:
    settings = load_settings(None, env={"GATEWAY_ADMIN_TOKEN": "s3cret"})
    assert [(t.name, t.role) for t in settings.tokens] == [("env", "operator")]


def test_model_table_is_parsed(tmp_path: Path) -> None:
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"x")
    path = write(tmp_path, f"""
[models.fraud]
artifact = "{artifact.name}"
max_inflight = 8
inline_max_us = 50
[models.fraud.runtime]
intra_op_threads = 2
graph_optimization = "basic"
[[models.fraud.inputs]]
name = "features"
datatype = "FP32"
shape = [-1, 20]
""")
    model = load_settings(path, env={}).models[0]
    assert model.artifact == artifact.resolve()
    assert (model.max_inflight, model.inline_max_us) == (8, 50.0)
    assert model.runtime.intra_op_threads == 2 and model.runtime.graph_optimization == "basic"
    assert model.inputs[0].shape == (-1, 20)


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[server]\ngrpc_prot = 1\n", "server.grpc_prot", "unknown key"),
    ("[server]\ngrpc_port = 'x'\n", "server.grpc_port", "expected an integer, got str"),
    ("[server]\ngrpc_port = 70000\n", "server.grpc_port", "expected a port"),
    ("[server]\nmax_message_bytes = 0\n", "server.max_message_bytes", "positive"),
    ("[server]\nallow_repository_control = 1\n", "server.allow_repository_control",
     "expected a boolean"),
    ("[serverr]\n", "serverr", "unknown key"),
    ("[server]\nreplica_id = ''\n", "server.replica_id", "expected 1 to 120 characters"),
    ("[server]\nreplica_id = 3\n", "server.replica_id", "expected a string"),
    ("[lifecycle]\nleader_lease_s = 0\n", "lifecycle.leader_lease_s",
     "expected a positive number"),
    ("[auth.tokens.ops]\ntoken = 't'\nrole = 'admin'\n", "auth.tokens.ops.role",
     "expected one of reader, operator"),
    ("[models.m]\nartifact = 'missing.onnx'\n", "models.m.artifact", "file not found"),
    ("[models.m]\nbootstrap = 'magic'\n", "models.m.bootstrap", "expected one of"),
    ("[models.m.runtime]\ngraph_optimization = 'max'\n", "models.m.runtime.graph_optimization",
     "expected one of"),
    ("[models.m.logging]\nsample_rate = 2\n", "models.m.logging.sample_rate",
     "expected a fraction between 0 and 1"),
    ("[[models.m.inputs]]\nname = 'x'\ndatatype = 'FP8'\nshape = [1]\n",
     "models.m.inputs[0].datatype", "expected one of"),
    ("[tls]\ncert = 'c.pem'\n", "tls", "cert and key must be given together"),
    ("not toml = = 1", "-", "not valid TOML"),
])
def test_bad_config_names_file_key_and_reason(tmp_path: Path, text: str, key: str,
                                              reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.source == str(path)
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(path) in str(info.value) and key in str(info.value)
