"""TLS and mutual TLS on both ports, with certificates made by the openssl CLI per test run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc
from gateway.pb import grpc_service_pb2 as ipb
from gateway.pb import grpc_service_pb2_grpc as ipb_grpc
from tests.admin.helpers import OPERATOR_TOKEN
from tests.conftest import write_config
from tests.support.inprocess import InProcessGateway

METADATA = (("authorization", f"Bearer {OPERATOR_TOKEN}"),)


def self_signed(directory: Path, name: str, san: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("certs")
    return {"server": self_signed(root, "server", "DNS:localhost,IP:127.0.0.1"),
            "client": self_signed(root, "client", "DNS:client"),
            "stranger": self_signed(root, "stranger", "DNS:stranger")}


def tls_gateway(root: Path, model_files: dict[str, Path], tls: str) -> InProcessGateway:
    extra = (f'[auth.tokens.ops]\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\n'
             f"[tls]\n{tls}")
    config = write_config(root / "gateway.toml", {"fraud": model_files["logreg"]}, extra)
    return InProcessGateway.start_from(config, root / "data")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path],
               certs: dict[str, tuple[Path, Path]]) -> Iterator[InProcessGateway]:
    cert, key = certs["server"]
    server = tls_gateway(tmp_path_factory.mktemp("tls"), model_files,
                         f'cert = "{cert}"\nkey = "{key}"\n')
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path],
                certs: dict[str, tuple[Path, Path]]) -> Iterator[InProcessGateway]:
    cert, key = certs["server"]
    client_ca = certs["client"][0]
    server = tls_gateway(tmp_path_factory.mktemp("mtls"), model_files,
                         f'cert = "{cert}"\nkey = "{key}"\nclient_ca = "{client_ca}"\n')
    yield server
    server.stop()


def credentials(certs: dict[str, tuple[Path, Path]], client: str | None = None
                ) -> grpc.ChannelCredentials:
    chain = key = None
    if client is not None:
        chain, key = (p.read_bytes() for p in certs[client])
    return grpc.ssl_channel_credentials(root_certificates=certs["server"][0].read_bytes(),
                                        private_key=key, certificate_chain=chain)


def both_ports_answer(server: InProcessGateway, creds: grpc.ChannelCredentials) -> None:
    with grpc.secure_channel(server.admin_address, creds) as channel:
        models = admin_pb2_grpc.AdminServiceStub(channel).ListModels(
            apb.ListModelsRequest(), metadata=METADATA, timeout=10)
        assert [m.name for m in models.models] == ["fraud"]
    with grpc.secure_channel(server.grpc_address, creds) as channel:
        stub = ipb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(ipb.ServerLiveRequest(), timeout=10).live


def refused(address: str, creds: grpc.ChannelCredentials | None) -> None:
    channel = (grpc.insecure_channel(address) if creds is None
               else grpc.secure_channel(address, creds))
    with channel, pytest.raises(grpc.RpcError) as info:
        admin_pb2_grpc.AdminServiceStub(channel).ListModels(
            apb.ListModelsRequest(), metadata=METADATA, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_on_both_ports(tls_server: InProcessGateway,
                           certs: dict[str, tuple[Path, Path]]) -> None:
    both_ports_answer(tls_server, credentials(certs))
    for address in (tls_server.admin_address, tls_server.grpc_address):
        refused(address, None)  # plaintext
    untrusted = grpc.ssl_channel_credentials(root_certificates=certs["client"][0].read_bytes())
    refused(tls_server.admin_address, untrusted)


def test_mutual_tls_rejects_clients_without_a_trusted_certificate(
        mtls_server: InProcessGateway, certs: dict[str, tuple[Path, Path]]) -> None:
    both_ports_answer(mtls_server, credentials(certs, "client"))
    for address in (mtls_server.admin_address, mtls_server.grpc_address):
        refused(address, credentials(certs))
        refused(address, credentials(certs, "stranger"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_cli_over_tls_and_mutual_tls(tls_server: InProcessGateway,
                                     mtls_server: InProcessGateway,
                                     certs: dict[str, tuple[Path, Path]]) -> None:
    ca = str(certs["server"][0])
    auth = ["--token", OPERATOR_TOKEN, "--tls-ca", ca]
    result = cli("models", "list", "--target", tls_server.admin_address, *auth)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("fraud ")
    result = cli("models", "list", "--target", tls_server.admin_address,
                 "--token", OPERATOR_TOKEN)
    assert result.returncode == 1 and result.stderr.startswith("gateway: error: UNAVAILABLE")

    cert, key = certs["client"]
    result = cli("models", "show", "fraud", "--target", mtls_server.admin_address, *auth,
                 "--tls-cert", str(cert), "--tls-key", str(key))
    assert result.returncode == 0, result.stderr
    result = cli("models", "show", "fraud", "--target", mtls_server.admin_address, *auth)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
