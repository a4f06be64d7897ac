"""The ``gateway serve`` process: exit codes, port file, restart and artifact integrity."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np

from gateway.pb import grpc_service_pb2 as pb
from gateway.pb import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import write_config
from tests.support.subprocess_gateway import SubprocessGateway


def serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "serve", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\ngrpc_port = 'eight'\n")
    result = serve("--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert f"{config}: server.grpc_port: expected an integer" in result.stderr


def test_busy_port_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = serve("--grpc-port", str(port), "--http-port", "0",
                       "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert f"cannot bind 127.0.0.1:{port}" in result.stderr


def infer(address: str, model: str) -> pb.ModelInferResponse:
    x = np.zeros((1, 20), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 20])
    request.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def test_restart_restores_serving_and_corrupt_artifact_is_detected(
    tmp_path: Path, model_files: dict[str, Path],
) -> None:
    config = write_config(tmp_path / "g.toml", {"logreg": model_files["logreg"],
                                                "other": model_files["logreg_b"]})
    data = tmp_path / "data"
    with SubprocessGateway(config, data) as gw:
        assert infer(gw.grpc_address, "logreg").model_version == "1"
        assert infer(gw.grpc_address, "other").model_version == "1"
    # Restart without the config: the database alone restores the same serving state.
    with SubprocessGateway(None, data) as gw:
        assert infer(gw.grpc_address, "logreg").model_version == "1"
        assert infer(gw.grpc_address, "other").model_version == "1"
    sha = hashlib.sha256(model_files["logreg_b"].read_bytes()).hexdigest()
    artifact = data / "artifacts" / "sha256" / f"{sha}.onnx"
    corrupted = bytearray(artifact.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    artifact.write_bytes(bytes(corrupted))
    with SubprocessGateway(None, data) as gw:
        assert infer(gw.grpc_address, "logreg").model_version == "1"
        try:
            infer(gw.grpc_address, "other")
            raise AssertionError("a corrupt artifact must not be served")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(gw.grpc_address) as channel:
            index = pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
                pb.RepositoryIndexRequest())
        reasons = {m.name: m.reason for m in index.models}
        assert "sha256" in reasons["other"] or "corrupt" in reasons["other"].lower()
    assert "load_failed" in gw.log_path.read_text()


def test_repository_unload_and_load_survive_restart_and_access_log_is_opt_in(
    tmp_path: Path, model_files: dict[str, Path],
) -> None:
    config = write_config(
        tmp_path / "g.toml", {"logreg": model_files["logreg"], "other": model_files["logreg_b"]},
        "[server]\nallow_repository_control = true\naccess_log_sample = 1.0\n"
        "[auth.tokens.ops]\ntoken = 'tok'\nrole = 'operator'\n",
    )
    data = tmp_path / "data"
    auth = (("authorization", "Bearer tok"),)

    def ready(address: str, model: str) -> bool:
        with grpc.insecure_channel(address) as channel:
            return pb_grpc.GRPCInferenceServiceStub(channel).ModelReady(
                pb.ModelReadyRequest(name=model)).ready

    with SubprocessGateway(config, data) as gw:
        response = infer(gw.grpc_address, "logreg")
        with grpc.insecure_channel(gw.grpc_address) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="other"), metadata=auth)
        assert not ready(gw.grpc_address, "other")
    access = [line for line in gw.log_path.read_text().splitlines() if '"access"' in line]
    assert any(response.id in line for line in access)
    with SubprocessGateway(config, data) as gw:
        assert ready(gw.grpc_address, "logreg") and not ready(gw.grpc_address, "other")
        with grpc.insecure_channel(gw.grpc_address) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="other"), metadata=auth)
        assert ready(gw.grpc_address, "other")
    with SubprocessGateway(config, data) as gw:
        assert ready(gw.grpc_address, "other")
