"""The parts of ``gateway serve --workers`` that need no process: port reservation, the
metric files and their merge, and the settings a worker runs with."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.metrics import (
    LATENCY_BUCKETS,
    GatewayMetrics,
    forget_process,
    multiprocess_registry,
)
from gateway.rpc.server import PortInUse, server_options
from gateway.settings import ConfigError, Settings, WorkerRole, load_settings
from gateway.workers import reserve_port


def listener(port: int, *, reuse_port: bool) -> socket.socket:
    """A listening socket as grpc binds one: SO_REUSEADDR, SO_REUSEPORT when asked."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.listen()
    return sock


def test_a_reserved_port_takes_reuseport_listeners_and_refuses_everything_else() -> None:
    with reserve_port("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        with pytest.raises(OSError):
            listener(port, reuse_port=False).close()  # a single-process gateway
        with pytest.raises(PortInUse, match=f"cannot bind 127.0.0.1:{port}"):
            reserve_port("127.0.0.1", port).close()  # another supervisor
        with listener(port, reuse_port=True) as a, listener(port, reuse_port=True) as b:
            # The reservation never listens: every connection goes to a worker.
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            a.settimeout(0.2)
            b.settimeout(0.2)
            accepted = 0
            for sock in (a, b):
                with contextlib.suppress(TimeoutError):  # the other worker got it
                    sock.accept()[0].close()
                    accepted += 1
            assert accepted == 1
            with pytest.raises(PortInUse):
                reserve_port("127.0.0.1", port).close()  # workers of another gateway listen


def test_reserve_port_refuses_a_port_a_single_process_listens_on() -> None:
    with listener(0, reuse_port=False) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(PortInUse, match=f"cannot bind 127.0.0.1:{port}"):
            reserve_port("127.0.0.1", port)


def test_so_reuseport_only_in_workers_mode(tmp_path: Path) -> None:
    single = Settings()
    worker = replace(single, worker=WorkerRole(index=1, count=2, metrics_dir=tmp_path))
    assert ("grpc.so_reuseport", 0) in server_options(single)
    assert ("grpc.so_reuseport", 1) in server_options(worker)


def samples(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in multiprocess_registry(directory).collect():
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_worker_metrics_merge_into_exact_sums(tmp_path: Path) -> None:
    workers = [GatewayMetrics(multiprocess_dir=tmp_path, worker=i) for i in range(2)]
    latencies = [0.0002, 0.003, 0.003, 7.0, 99.0]
    for i, seconds in enumerate(latencies):
        metrics = workers[i % 2]
        metrics.version("fraud", "1").success(seconds)
        metrics.version("fraud", "2").failure("INVALID_ARGUMENT", seconds)
    for metrics in workers:
        metrics.publish()
    got = samples(tmp_path)
    v1 = (("model", "fraud"), ("version", "1"))
    assert got[("gateway_requests_total", (("code", "OK"), *v1))] == 5
    assert got[("gateway_requests_total",
                (("code", "INVALID_ARGUMENT"), ("model", "fraud"), ("version", "2")))] == 5
    assert got[("gateway_request_latency_seconds_count", v1)] == 5
    assert got[("gateway_request_latency_seconds_sum", v1)] == pytest.approx(sum(latencies))
    bucket = {float(dict(labels)["le"]): value for (name, labels), value in got.items()
              if name == "gateway_request_latency_seconds_bucket"
              and dict(labels)["version"] == "1"}
    assert sorted(bucket) == [*LATENCY_BUCKETS, float("inf")]  # every bucket, zeros too
    assert bucket[0.0001] == 0 and bucket[0.00025] == 1 and bucket[0.005] == 3
    assert bucket[10.0] == 4 and bucket[float("inf")] == 5
    # Each worker's total (10 requests of which 6 on worker 0) under its own label.
    assert got[("gateway_worker_requests_total", (("worker", "0"),))] == 6
    assert got[("gateway_worker_requests_total", (("worker", "1"),))] == 4
    # The exposition a scrape gets is the same merge.
    assert b'gateway_requests_total{code="OK",model="fraud",version="1"} 5.0' in (
        generate_latest(multiprocess_registry(tmp_path)))


def test_a_dead_workers_counts_stay_in_the_totals(tmp_path: Path) -> None:
    first = GatewayMetrics(multiprocess_dir=tmp_path, worker=1)
    first.version("fraud", "1").success(0.001)
    first.publish()
    forget_process(tmp_path, 2**22 + 1)  # some other pid: nothing of ours goes
    # Its replacement (same index, same pid in this test) starts from zero; the sums go on.
    second = GatewayMetrics(multiprocess_dir=tmp_path, worker=1)
    second.version("fraud", "1").success(0.001)
    second.version("fraud", "1").success(0.001)
    second.publish()
    got = samples(tmp_path)
    assert got[("gateway_requests_total",
                (("code", "OK"), ("model", "fraud"), ("version", "1")))] == 3
    assert got[("gateway_worker_requests_total", (("worker", "1"),))] == 3


def test_single_process_metrics_are_unchanged() -> None:
    metrics = GatewayMetrics()
    assert not metrics.multiprocess
    metrics.version("fraud", "1").success(0.001)
    assert b'gateway_requests_total{code="OK",model="fraud",version="1"} 1.0' in (
        metrics.exposition())


def test_workers_setting(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text("[server]\nworkers = 3\n")
    assert load_settings(config, env={}).workers == 3
    assert load_settings(None, env={}).workers == 1
    assert load_settings(config, env={}, overrides={"workers": 2}).workers == 2
    for bad in ("0", "true", "'two'"):
        config.write_text(f"[server]\nworkers = {bad}\n")
        with pytest.raises(ConfigError, match="server.workers"):
            load_settings(config, env={})
    with pytest.raises(ConfigError, match="workers: expected a positive number"):
        load_settings(None, env={}, overrides={"workers": 0})


def test_each_worker_journals_apart_and_only_the_leader_runs_the_lifecycle(
        tmp_path: Path) -> None:
    settings = replace(Settings(data_dir=tmp_path),
                       lifecycle=replace(Settings().lifecycle, enabled=True))

    def as_worker(index: int) -> Settings:
        return replace(settings, worker=WorkerRole(index=index, count=3, metrics_dir=tmp_path))

    base = tmp_path / "request-log"
    assert settings.effective_journal_dir == base
    # The leader keeps the single process's journal: switching modes strands nothing.
    assert as_worker(0).effective_journal_dir == base
    assert as_worker(2).effective_journal_dir == base / "worker-2"
    assert settings.leader and settings.lifecycle_enabled
    assert as_worker(0).leader and as_worker(0).lifecycle_enabled
    assert not as_worker(1).leader and not as_worker(1).lifecycle_enabled
