"""What every subcommand shares: connection flags, the channel, auth, and errors.

The CLI is a gRPC client like any other: it knows the admin API (and, for feedback, the
inference port's FeedbackService), not the server.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from gateway.pb import admin_pb2_grpc, feedback_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:8003"
ENV_TARGET = "GATEWAY_ADMIN_TARGET"
DEFAULT_INFERENCE_TARGET = "127.0.0.1:8001"
ENV_INFERENCE_TARGET = "GATEWAY_INFERENCE_TARGET"
ENV_TOKEN = "GATEWAY_ADMIN_TOKEN"
DEFAULT_TIMEOUT_S = 120.0
EXIT_ERROR = 1
# Download chunks are at most 4 MiB; leave room for framing.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024),
                    ("grpc.max_send_message_length", 16 * 1024 * 1024)]


class CliError(Exception):
    """A failure to report as ``gateway: error: <message>`` with exit status 1."""


def connection_flags() -> argparse.ArgumentParser:
    """A parent parser with the flags every admin subcommand takes."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--target", default=os.environ.get(ENV_TARGET, DEFAULT_TARGET),
        help=f"admin service host:port (default ${ENV_TARGET} or {DEFAULT_TARGET})")
    group.add_argument("--token", default=os.environ.get(ENV_TOKEN),
                       help=f"bearer token (default ${ENV_TOKEN})")
    _tls_and_timeout(group)
    parent.add_argument("--json", action="store_true",
                        help="print the API objects as JSON (proto field names)")
    return parent


def inference_flags() -> argparse.ArgumentParser:
    """A parent parser for the subcommands that talk to the inference port."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--inference-target",
        default=os.environ.get(ENV_INFERENCE_TARGET, DEFAULT_INFERENCE_TARGET),
        help=f"inference gRPC host:port (default ${ENV_INFERENCE_TARGET} or "
             f"{DEFAULT_INFERENCE_TARGET})")
    _tls_and_timeout(group)
    parent.add_argument("--json", action="store_true", help="print the result as JSON")
    return parent


def _tls_and_timeout(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--tls-ca", type=Path,
                       help="PEM CA certificate: connect with TLS and trust this CA")
    group.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    group.add_argument("--tls-key", type=Path, help="PEM client key (mutual TLS)")
    group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                       help=f"seconds per call (default {DEFAULT_TIMEOUT_S:g})")


class AdminClient:
    """A channel to the admin service with the caller's token on every call."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._timeout = args.timeout
        self._metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
        self._channel = _channel(args, args.target)
        self.stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def call(self, method: str, request: Any) -> Any:
        """Call ``method`` (a unary response, or an iterator for a server stream)."""
        return getattr(self.stub, method)(request, timeout=self._timeout,
                                          metadata=self._metadata)

    def stream(self, method: str, request: Any) -> Any:
        """A server stream without a deadline (an export may take longer than --timeout);
        the server still ends it when the client goes away."""
        return getattr(self.stub, method)(request, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()


class FeedbackClient:
    """A channel to the inference port's FeedbackService."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.timeout = args.timeout
        self._channel = _channel(args, args.inference_target)
        self.stub = feedback_pb2_grpc.FeedbackServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()


def _channel(args: argparse.Namespace, target: str) -> grpc.Channel:
    if args.tls_ca is None and args.tls_cert is None:
        return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")

    def read(path: Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from exc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca), private_key=read(args.tls_key),
        certificate_chain=read(args.tls_cert))
    return grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)


def admin_command(
    fn: Callable[[AdminClient, argparse.Namespace], int | None],
) -> Callable[[argparse.Namespace], int]:
    """Run ``fn`` with a client; report any failure on stderr with exit status 1."""
    return _command(AdminClient, fn)


def feedback_command(
    fn: Callable[[FeedbackClient, argparse.Namespace], int | None],
) -> Callable[[argparse.Namespace], int]:
    """``admin_command`` for the inference port's FeedbackService."""
    return _command(FeedbackClient, fn)


def _command(factory: Callable[[argparse.Namespace], Any],
             fn: Callable[[Any, argparse.Namespace], int | None],
             ) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            client = factory(args)
            try:
                return fn(client, args) or 0
            finally:
                client.close()
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            details = exc.details()  # type: ignore[attr-defined]
            print(f"gateway: error: {code.name}: {details}", file=sys.stderr)
        except CliError as exc:
            print(f"gateway: error: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print("gateway: interrupted", file=sys.stderr)
        return EXIT_ERROR

    return run
