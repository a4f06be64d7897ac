"""gRPC server construction: options, binding (refusing busy ports), health, reflection."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.settings import Settings, TlsSettings


class PortInUse(OSError):
    pass


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # grpcio enables SO_REUSEPORT by default, which lets a second gateway silently
        # share the port; a single process must refuse a busy port instead. Workers of
        # ``gateway serve --workers`` share their ports on purpose: the supervisor checked
        # the port was free and holds it (``gateway.workers.reserve_port``), and the
        # kernel spreads connections over the workers' listeners.
        ("grpc.so_reuseport", 0 if settings.worker is None else 1),
    ]


def credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    if not tls.enabled:
        return None
    assert tls.cert is not None and tls.key is not None
    client_ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def bind(server: grpc.aio.Server, host: str, port: int, tls: TlsSettings) -> int:
    address = f"{host}:{port}"
    creds = credentials(tls)
    try:
        bound = (
            server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        )
    except RuntimeError as exc:
        raise PortInUse(f"cannot bind {address}: {exc}") from exc
    if bound == 0:
        raise PortInUse(f"cannot bind {address}: the address is in use or not available")
    return int(bound)


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: list[str]
) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return servicer
