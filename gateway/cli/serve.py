"""``gateway serve``: parse flags, load settings, hand over to the app."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from gateway.logs import configure_logging
from gateway.rpc.server import PortInUse
from gateway.settings import ConfigError, Settings, load_settings

EXIT_CONFIG = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve models over gRPC (V2 inference) and HTTP (metrics, health)",
        description="Start the gateway. Flags override environment variables, which "
                    "override the config file.",
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, help="V2 inference port (default 8001; 0: any)")
    parser.add_argument("--http-port", type=int, help="metrics/health port (default 8002; 0: any)")
    parser.add_argument("--admin-port", type=int,
                        help="admin gRPC port (default 8003; 0: any)")
    parser.add_argument("--data-dir", type=Path, help="SQLite database and artifacts (./var)")
    parser.add_argument("--port-file", type=Path,
                        help="write the bound ports as JSON here once serving")
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        settings = load_settings(args.config, overrides={
            "host": args.host, "grpc_port": args.grpc_port, "http_port": args.http_port,
            "admin_port": args.admin_port,
            "data_dir": args.data_dir, "port_file": args.port_file,
        })
    except ConfigError as exc:
        print(f"gateway: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        _run_loop(settings)
    except ConfigError as exc:
        print(f"gateway: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PortInUse as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _run_loop(settings: Settings) -> None:
    from gateway.app import serve

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    if settings.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())
