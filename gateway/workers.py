"""``gateway serve --workers N``: a supervisor and N worker processes sharing the ports.

One Python process saturates about 1.2 cores (the GIL); N processes share the load:

- **The supervisor** (the process you start) checks the configuration, checks that the
  inference and admin ports are free and **holds** them (``reserve_port``: a socket bound
  with ``SO_REUSEPORT`` that never listens, so it takes no connections; a port 0 gets its
  number here, before any worker starts, and nobody else can take the port while a worker
  restarts). It serves the **HTTP port itself**: ``/metrics`` merges every worker's metric
  files (prometheus-client multiprocess mode, a fresh ``PROMETHEUS_MULTIPROC_DIR`` per
  run), ``/v2/health/ready`` is true once every worker has started and then while any
  worker serves. It starts the workers, restarts one that dies (after 0.5 s, doubling to
  30 s while it keeps dying), forwards SIGTERM/SIGINT and waits for them.
- **Worker i** is ``python -m gateway serve --worker-index i …``: the normal app on the
  same configuration, its inference server bound to the shared port with ``SO_REUSEPORT``
  (the kernel spreads *connections*, not calls, over the listeners), its own request-log
  journal (``Settings.effective_journal_dir``), the same database.
- **Worker 0 is the leader**: it alone serves the admin port and runs the lifecycle and
  the canary and bandit loops. It starts first and alone, since it migrates and seeds the
  database and bootstraps models; the others start once it is ready. A traffic policy
  changed through the admin port reaches the other workers within ``[traffic]
  policy_sync_s`` (``ModelManager.sync_policies``); a move of the production alias
  (promote, rollback) does not yet: the others serve the new production at their restart.
- Every worker holds the read end of a pipe whose write end only the supervisor has: if
  the supervisor dies, even by SIGKILL, the workers see the end of the pipe and stop
  instead of holding the port.

Processes are started with ``subprocess`` (exec), not ``fork``: forking beside gRPC's
threads is unsafe, and a fresh interpreter picks up ``PROMETHEUS_MULTIPROC_DIR`` before
prometheus-client is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Counter, generate_latest

from gateway.http import HttpEndpoint
from gateway.metrics import forget_process, multiprocess_registry
from gateway.rpc.server import PortInUse
from gateway.settings import Settings
from lifecycle.leases import pid_alive

__all__ = ["Supervisor", "reserve_port", "run_supervisor"]

log = logging.getLogger("gateway.workers")

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_S = 30.0  # a worker that lived this long restarts after the initial backoff again
READY_POLL_S = 0.05
STOP_MARGIN_S = 30.0  # beyond a worker's own bounds (grace + log flush) before SIGKILL
EXIT_CONFIG = 2
RUN_DIR_PREFIX = "gateway-workers-"  # + the supervisor's pid: its port files and metrics


def reserve_port(host: str, port: int) -> socket.socket:
    """Hold ``host:port`` (``port`` 0: a free one) for the workers' listeners.

    Returns a socket bound with ``SO_REUSEPORT`` that never listens: the workers' gRPC
    servers bind the same port with ``SO_REUSEPORT``; anything else is refused while the
    socket is open. An explicit port is probed first without ``SO_REUSEPORT`` (refused if
    anything, including another workers' gateway, listens there). Raises ``PortInUse``.
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise PortInUse(f"cannot bind {host}:{port}: {exc}") from exc
    if port != 0:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: connections left in TIME_WAIT by an earlier server own nothing.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise PortInUse(f"cannot bind {host}:{port}: {exc.strerror or exc}") from exc
    # Without SO_REUSEADDR first: then a single-process gateway (SO_REUSEADDR only) is
    # refused even while no worker listens. Only TIME_WAIT leftovers of an earlier server
    # make that fail once the probe passed; then with SO_REUSEADDR.
    for reuse_addr in (False, True):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if reuse_addr:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            return sock
        except OSError as exc:
            sock.close()
            if reuse_addr or exc.errno != errno.EADDRINUSE:
                raise PortInUse(f"cannot bind {host}:{port}: {exc.strerror or exc}") from exc
    raise AssertionError("unreachable")


def _sweep_stale_run_dirs() -> None:
    """Remove the run directories of supervisors that died without cleaning up (kill -9)."""
    for path in Path(tempfile.gettempdir()).glob(RUN_DIR_PREFIX + "*"):
        pid = path.name[len(RUN_DIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        if not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class _Worker:
    index: int
    port_file: Path
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    started_at: float = 0.0
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Runs the workers of one ``gateway serve --workers`` (see the module docstring).

    ``worker_argv``: the command of a worker without its per-worker flags (the config,
    host, data dir and log level of the supervisor's own command line).
    """

    def __init__(self, settings: Settings, worker_argv: Sequence[str]) -> None:
        self.settings = settings
        self._argv = list(worker_argv)
        _sweep_stale_run_dirs()
        self._run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
        self._metrics_dir = self._run_dir / "metrics"
        self._metrics_dir.mkdir()
        self._workers = [_Worker(i, self._run_dir / f"worker-{i}.json")
                         for i in range(settings.workers)]
        self._registry = multiprocess_registry(self._metrics_dir)
        self._restarts = Counter("gateway_worker_restarts", "Worker processes restarted "
                                 "after an unexpected exit.", ["worker"],
                                 registry=self._registry)
        self._sockets: list[socket.socket] = []
        self._ports: dict[str, int] = {}
        self._http: HttpEndpoint | None = None
        self._pipe: tuple[int, int] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False
        self._stop = asyncio.Event()

    def is_ready(self) -> bool:
        """Once every worker has started, and then while any serves: the port answers
        as long as one worker listens (one restarting takes no connections)."""
        return self._started and not self._stopping and any(w.ready for w in self._workers)

    def _exposition(self) -> bytes:
        return generate_latest(self._registry)

    async def run(self, stop: asyncio.Event, signals: list[int]) -> int:
        """Until ``stop`` is set (by SIGTERM/SIGINT, recorded in ``signals``); returns the
        exit code: 0, ``EXIT_CONFIG`` for a busy port, a worker's code when one fails to
        start, 1 when a worker did not stop cleanly."""
        self._stop = stop
        try:
            settings = self.settings
            grpc_sock = reserve_port(settings.host, settings.grpc_port)
            self._sockets.append(grpc_sock)
            admin_sock = reserve_port(settings.host, settings.admin_port)
            self._sockets.append(admin_sock)
            self._ports = {"grpc": grpc_sock.getsockname()[1],
                           "admin": admin_sock.getsockname()[1]}
            self._http = HttpEndpoint(metrics=self._exposition, live=lambda: True,
                                      ready=self.is_ready)
            try:
                self._ports["http"] = await self._http.start(settings.host, settings.http_port)
            except OSError as exc:
                self._http = None
                raise PortInUse(f"cannot bind {settings.host}:{settings.http_port}: "
                                f"{exc.strerror or exc}") from exc
            self._pipe = os.pipe()
            failed = await self._start_all()
            if failed is None and not stop.is_set():
                self._started = True
                self._write_port_file()
                log.info("serving", extra={"event": "workers_started", "ports": self._ports,
                                           "workers": self._pids()})
                self._watchers = [asyncio.create_task(self._watch(w)) for w in self._workers]
                await stop.wait()
            return await self._shutdown(signals[-1] if signals else signal.SIGTERM,
                                        failed or 0)
        except PortInUse as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            await self._shutdown(signal.SIGTERM, 0)
            return EXIT_CONFIG
        finally:
            self._cleanup()

    async def _start_all(self) -> int | None:
        """The leader first, alone, then the others together. None when all are ready
        (or a stop came first); else the exit code of the first that failed."""
        for group in (self._workers[:1], self._workers[1:]):
            for worker in group:
                await self._spawn(worker)
            results = await asyncio.gather(*(self._wait_ready(w) for w in group))
            if self._stop.is_set():
                return None
            for worker, ready in zip(group, results, strict=True):
                if not ready:
                    assert worker.process is not None
                    code = worker.process.returncode or 1
                    print(f"gateway: worker {worker.index} exited with {code} while "
                          "starting (its log above says why)", file=sys.stderr)
                    return code if code > 0 else 1
        return None

    def _worker_command(self, worker: _Worker) -> list[str]:
        assert self._pipe is not None
        return [*self._argv, "--worker-index", str(worker.index),
                "--worker-count", str(len(self._workers)),
                "--supervisor-fd", str(self._pipe[0]),
                "--grpc-port", str(self._ports["grpc"]),
                "--admin-port", str(self._ports["admin"]),
                "--port-file", str(worker.port_file)]

    async def _spawn(self, worker: _Worker) -> None:
        assert self._pipe is not None
        worker.port_file.unlink(missing_ok=True)
        worker.ready = False
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir)}
        # Same process group as the supervisor: a terminal's Ctrl-C and a kill of the
        # group reach every worker, and the group's CPU is the gateway's.
        worker.process = await asyncio.create_subprocess_exec(
            *self._worker_command(worker), env=env, pass_fds=(self._pipe[0],))
        worker.started_at = time.monotonic()
        log.info("worker started", extra={"event": "worker_started", "worker": worker.index,
                                          "pid": worker.process.pid})

    async def _wait_ready(self, worker: _Worker) -> bool:
        """Until the worker wrote its port file (True), exited or a stop came (False)."""
        while not self._stop.is_set():
            if not worker.running:
                return False
            if worker.port_file.exists():
                worker.ports = json.loads(worker.port_file.read_text())
                worker.ready = True
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), READY_POLL_S)
        return False

    async def _watch(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it exits, with a growing backoff, until the stop."""
        backoff = INITIAL_BACKOFF_S
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping:
                return
            worker.ready = False
            forget_process(self._metrics_dir, worker.process.pid)
            if time.monotonic() - worker.started_at >= STABLE_S:
                backoff = INITIAL_BACKOFF_S
            log.error("worker exited; restarting it", extra={
                "event": "worker_exited", "worker": worker.index, "pid": worker.process.pid,
                "exit_code": code, "restart_in_s": backoff})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            if self._stop.is_set():
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            self._restarts.labels(str(worker.index)).inc()
            await self._spawn(worker)
            if await self._wait_ready(worker):
                self._write_port_file()
                log.info("worker restarted", extra={"event": "worker_restarted",
                                                    "worker": worker.index,
                                                    "pid": worker.process.pid})

    async def _shutdown(self, sig: int, code: int) -> int:
        """Forward ``sig`` to every worker and wait for them: each drains for its
        ``shutdown_grace_s`` and flushes its request log. One that outlives its bounds by
        ``STOP_MARGIN_S`` is killed. Returns ``code``, or 1 if a worker failed to stop."""
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        live = [w for w in self._workers if w.running]
        for worker in live:
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(sig)
        settings = self.settings
        deadline = time.monotonic() + (settings.shutdown_grace_s
                                       + settings.request_log.stop_timeout_s + STOP_MARGIN_S)
        for worker in live:
            assert worker.process is not None
            try:
                exit_code = await asyncio.wait_for(worker.process.wait(),
                                                   max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.error("worker did not stop; killing it", extra={
                    "event": "worker_killed", "worker": worker.index,
                    "pid": worker.process.pid})
                worker.process.kill()
                exit_code = await worker.process.wait()
            if exit_code != 0 and code == 0:
                log.error("worker stopped with an error", extra={
                    "event": "worker_stop_failed", "worker": worker.index,
                    "exit_code": exit_code})
                code = 1
        if self._http is not None:
            await self._http.stop()
        log.info("stopped", extra={"event": "workers_stopped"})
        return code

    def _cleanup(self) -> None:
        for sock in self._sockets:
            sock.close()
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        shutil.rmtree(self._run_dir, ignore_errors=True)

    def _pids(self) -> list[int]:
        return [w.process.pid if w.process else 0 for w in self._workers]

    def _write_port_file(self) -> None:
        """Atomically; rewritten with the new pid when a worker was restarted."""
        path = self.settings.port_file
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**self._ports, "pid": os.getpid(),
                                   "workers": self._pids()}))
        os.replace(tmp, path)


def run_supervisor(settings: Settings, worker_argv: Sequence[str]) -> int:
    """Serve with ``settings.workers`` processes until SIGTERM or SIGINT; the exit code."""

    async def main() -> int:
        stop = asyncio.Event()
        received: list[int] = []
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            received.append(sig)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        return await Supervisor(settings, worker_argv).run(stop, received)

    return asyncio.run(main())
