"""``gateway serve``: parse flags, load settings, hand over to the app."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from gateway.logs import configure_logging
from gateway.rpc.server import PortInUse
from gateway.settings import ConfigError, Settings, WorkerRole, load_settings

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
    parser.add_argument("--workers", type=int,
                        help="worker processes sharing the ports (default 1; see README, "
                             "\"Worker processes\")")
    # Set by the supervisor of --workers on the command of each worker (gateway.workers).
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor-fd", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    is_worker = args.worker_index is not None
    try:
        settings = load_settings(args.config, overrides={
            "host": args.host, "grpc_port": args.grpc_port, "http_port": args.http_port,
            "admin_port": args.admin_port, "workers": args.workers,
            "data_dir": args.data_dir, "port_file": args.port_file,
        })
        if is_worker:
            settings = _as_worker(settings, args)
    except ConfigError as exc:
        print(f"gateway: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not is_worker and settings.workers > 1:
        from gateway.workers import run_supervisor

        return run_supervisor(settings, _worker_argv(args))
    try:
        _run_loop(settings, args.supervisor_fd)
    except ConfigError as exc:
        print(f"gateway: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PortInUse as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _as_worker(settings: Settings, args: argparse.Namespace) -> Settings:
    """This process is a worker of ``gateway serve --workers`` (``gateway.workers``)."""
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        raise ConfigError("environment", "PROMETHEUS_MULTIPROC_DIR",
                          "a worker needs the metrics directory its supervisor sets")
    role = WorkerRole(index=args.worker_index, count=args.worker_count or 1,
                      metrics_dir=Path(metrics_dir))
    tag = _WorkerTag(role.index)
    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)
    return replace(settings, worker=role)


class _WorkerTag(logging.Filter):
    """Every log line of a worker names it (``"worker": i``)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """A worker's command, less what the supervisor adds per worker (index, ports…)."""
    argv = [sys.executable, "-m", "gateway", "serve", "--log-level", args.log_level]
    for flag, value in (("--config", args.config), ("--host", args.host),
                        ("--data-dir", args.data_dir)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _run_loop(settings: Settings, supervisor_fd: int | None = None) -> None:
    from gateway.app import serve

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if supervisor_fd is not None:
            _stop_with_supervisor(loop, supervisor_fd, stop)
        await serve(settings, stop)

    if settings.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


def _stop_with_supervisor(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    """``fd`` is the read end of a pipe only the supervisor writes to: it becomes readable
    (end of file) when the supervisor is gone, however it died; then stop like SIGTERM."""

    def gone() -> None:
        loop.remove_reader(fd)
        logging.getLogger("gateway.workers").warning(
            "supervisor gone: stopping", extra={"event": "supervisor_gone"})
        stop.set()

    loop.add_reader(fd, gone)
