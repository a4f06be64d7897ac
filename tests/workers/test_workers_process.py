"""``gateway serve --workers 2`` as a real process tree on ephemeral ports.

``SO_REUSEPORT`` balances connections, not calls, so every test opens many channels, each
with its own connection (``grpc.use_local_subchannel_pool``). Which worker answered is told
by ``gateway_worker_requests_total{worker}`` on the supervisor's ``/metrics``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc
from gateway.pb import grpc_service_pb2 as pb
from gateway.pb import grpc_service_pb2_grpc as pb_grpc
from lifecycle.db import Database, make_engine
from lifecycle.request_store import RequestStore
from tests.conftest import write_config
from tests.request_log.gateway_support import metric, metrics
from tests.support.subprocess_gateway import SubprocessGateway
from tests.support.waiting import wait_until

TOKEN = "ops-secret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
CONFIG = (f'[auth.tokens.ops]\ntoken = "{TOKEN}"\nrole = "operator"\n'
          "[traffic]\npolicy_sync_s = 0.2\n"
          "[request_log]\nflush_interval_ms = 50\nstop_timeout_s = 5\n")
CHANNELS = 32  # all on one worker by chance: 2 in 2**32


def workers_gateway(config: Path, data: Path, *extra: str) -> SubprocessGateway:
    return SubprocessGateway(config, data, "--workers", "2", *extra)


def open_channels(address: str, count: int = CHANNELS) -> list[grpc.Channel]:
    """Channels that share no connection (channels with equal arguments otherwise may)."""
    return [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(count)]


def infer(channel: grpc.Channel, request_id: str = "", key: str = "") -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="fraud", id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 20])
    request.raw_input_contents.append(np.ones((1, 20), dtype=np.float32).tobytes())
    if key:
        request.parameters["routing_key"].string_param = key
    return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def stored_request_ids(data: Path) -> list[str]:
    database = Database(make_engine(f"sqlite:///{data / 'gateway.db'}"))
    try:
        return [r.request_id for r in RequestStore(database).query_requests("fraud")]
    finally:
        database.close()


def worker_totals(http_port: int) -> dict[str, float]:
    samples = metrics(http_port)
    return {labels[0][1]: value for (name, labels), value in samples.items()
            if name == "gateway_worker_requests_total"}


def requests_ok(http_port: int) -> float:
    return sum(value for (name, labels), value in metrics(http_port).items()
               if name == "gateway_requests_total" and ("code", "OK") in labels)


def settled_worker_totals(http_port: int) -> dict[str, float]:
    """Once the workers published every request they answered (each second)."""
    wait_until(lambda: sum(worker_totals(http_port).values()) == requests_ok(http_port))
    return worker_totals(http_port)


def worker_pids(gw: SubprocessGateway) -> list[int]:
    """From the port file, which the supervisor rewrites when it restarts a worker."""
    return list(json.loads(gw.port_file.read_text())["workers"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is dead too.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory,
       model_files: dict[str, Path]) -> Iterator[SubprocessGateway]:
    root = tmp_path_factory.mktemp("workers")
    config = write_config(root / "gateway.toml", {"fraud": model_files["logreg"]}, CONFIG)
    gateway = workers_gateway(config, root / "data").start()
    yield gateway
    assert gateway.stop() == 0


def test_the_port_file_names_the_supervisor_and_both_workers(gw: SubprocessGateway) -> None:
    assert set(gw.ports) == {"grpc", "http", "admin", "pid", "workers"}
    assert gw.process is not None and gw.ports["pid"] == gw.process.pid
    pids = worker_pids(gw)
    assert len(set(pids)) == 2 and gw.process.pid not in pids
    assert all(alive(pid) for pid in pids)


def test_connections_spread_over_both_workers_metrics_sum_exactly_and_each_request_is_logged_once(
        gw: SubprocessGateway) -> None:
    http = gw.ports["http"]
    before_workers = settled_worker_totals(http)
    before_ok = requests_ok(http)
    channels = open_channels(gw.grpc_address)
    try:
        ids = [f"spread-{c}-{i}" for c in range(CHANNELS) for i in range(4)]
        for n, request_id in enumerate(ids):
            assert infer(channels[n % CHANNELS], request_id).model_version == "1"
    finally:
        for channel in channels:
            channel.close()
    # Written through on every request: exact at once, whichever worker answered.
    assert requests_ok(http) - before_ok == len(ids)
    # Per worker, published every second.
    wait_until(lambda: sum(worker_totals(http).values()) - sum(before_workers.values())
               == len(ids))
    answered = {w: n - before_workers.get(w, 0) for w, n in worker_totals(http).items()}
    assert set(answered) == {"0", "1"} and min(answered.values()) > 0, answered
    # Both workers inserted into the one SQLite file at the same time, and no insert
    # failed (busy waits, not errors): every request is logged exactly once.
    with grpc.insecure_channel(gw.admin_address) as admin_channel:
        admin = admin_pb2_grpc.AdminServiceStub(admin_channel)

        def logged() -> list[str]:
            return [r.request_id for r in admin.QueryRequests(
                apb.QueryRequestsRequest(model="fraud", omit_payload=True), metadata=AUTH,
                timeout=30) if r.request_id.startswith("spread-")]

        wait_until(lambda: len(logged()) >= len(ids))
        assert sorted(logged()) == sorted(ids)
    assert metric(metrics(http), "gateway_request_log_failed_inserts_total") == 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def test_a_sticky_key_gets_the_same_version_from_every_worker(
        gw: SubprocessGateway, model_files: dict[str, Path]) -> None:
    admin = ["--target", gw.admin_address, "--token", TOKEN]
    cli("register", "fraud", str(model_files["logreg_b"]), *admin)
    cli("traffic", "set", "fraud", "1=50", "2=50", "--sticky", *admin)
    channels = open_channels(gw.grpc_address)
    try:
        # The leader applied the policy at once; the other worker follows within
        # policy_sync_s. Then every connection answers under the same experiment.
        def one_experiment() -> bool:
            found = {infer(c, key="probe").parameters["experiment_id"].string_param
                     for c in channels}
            return len(found) == 1 and found != {""}

        wait_until(one_experiment)
        before = settled_worker_totals(gw.ports["http"])
        versions = {}
        for k in range(16):
            served = {infer(c, key=f"user-{k}").model_version for c in channels}
            assert len(served) == 1, f"key user-{k} got versions {served}"
            versions[k] = served.pop()
        assert set(versions.values()) == {"1", "2"}  # a real split: 2 in 2**16 otherwise
        wait_until(lambda: sum(worker_totals(gw.ports["http"]).values())
                   - sum(before.values()) == 16 * CHANNELS)
        after = worker_totals(gw.ports["http"])
        assert all(after[w] > before.get(w, 0) for w in ("0", "1")), (before, after)
    finally:
        for channel in channels:
            channel.close()
        cli("traffic", "clear", "fraud", *admin)


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "serve", *args],
                          capture_output=True, text=True, timeout=120)


def test_a_single_process_gateway_still_refuses_a_busy_port(
        gw: SubprocessGateway, tmp_path: Path) -> None:
    port = gw.ports["grpc"]
    single = serve("--grpc-port", str(port), "--http-port", "0", "--admin-port", "0",
                   "--data-dir", str(tmp_path / "single"))
    assert single.returncode == 2
    assert f"cannot bind 127.0.0.1:{port}" in single.stderr
    # Nor does a second workers' gateway join the first one's workers on their port.
    second = serve("--workers", "2", "--grpc-port", str(port), "--http-port", "0",
                   "--admin-port", "0", "--data-dir", str(tmp_path / "second"))
    assert second.returncode == 2
    assert f"cannot bind 127.0.0.1:{port}" in second.stderr


def test_a_busy_port_or_a_bad_config_fail_before_any_worker_starts(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        busy = serve("--workers", "2", "--grpc-port", str(port), "--http-port", "0",
                     "--admin-port", "0", "--data-dir", str(tmp_path / "d"))
    assert busy.returncode == 2 and f"cannot bind 127.0.0.1:{port}" in busy.stderr
    assert '"worker_started"' not in busy.stderr
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nworkers = 'two'\n")
    bad = serve("--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert bad.returncode == 2
    assert f"{config}: server.workers: expected an integer" in bad.stderr
    zero = serve("--workers", "0", "--data-dir", str(tmp_path / "d"))
    assert zero.returncode == 2 and "workers: expected a positive number" in zero.stderr


def test_a_worker_that_fails_to_start_fails_the_gateway_with_its_exit_code(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    not_a_dir = tmp_path / "journal"
    not_a_dir.write_text("a file where the journal directory should be")
    config = write_config(tmp_path / "g.toml", {"fraud": model_files["logreg"]},
                          f'[request_log]\njournal_dir = "{not_a_dir}"\n')
    failed = serve("--config", str(config), "--workers", "2", "--grpc-port", "0",
                   "--http-port", "0", "--admin-port", "0", "--data-dir", str(tmp_path / "d"))
    assert failed.returncode == 2
    assert "request_log.journal_dir: cannot use" in failed.stderr
    assert "worker 0 exited with 2 while starting" in failed.stderr


class Load:
    """Unique requests from threads, each on its own connection, until stopped."""

    def __init__(self, address: str, threads: int = 6) -> None:
        self.answered: list[str] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._channels = open_channels(address, threads)
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            request_id = f"load-{i}-{n}"
            n += 1
            try:
                infer(self._channels[i], request_id)
            except grpc.RpcError as exc:
                self.failed.append(f"{exc.code().name}: {exc.details()}")
                self._stop.wait(0.01)  # back off, but stop at once when told
                continue
            self.answered.append(request_id)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        for channel in self._channels:
            channel.close()


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_sigterm_under_load_loses_nothing(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    config = write_config(tmp_path / "gateway.toml", {"fraud": model_files["logreg"]},
                          CONFIG)
    data = tmp_path / "data"
    gw = workers_gateway(config, data).start()
    try:
        http = gw.ports["http"]
        for index in (1, 0):  # the leader too: its admin port comes back on its number
            old = worker_pids(gw)[index]
            os.kill(old, signal.SIGKILL)

            def replaced(index: int = index, old: int = old) -> bool:
                pid = worker_pids(gw)[index]
                return pid != old and alive(pid)

            wait_until(replaced, timeout=60)
            assert metric(metrics(http), "gateway_worker_restarts_total",
                          worker=str(index)) == 1
        with grpc.insecure_channel(gw.admin_address) as channel:
            models = admin_pb2_grpc.AdminServiceStub(channel).ListModels(
                apb.ListModelsRequest(), metadata=AUTH, timeout=30)
            assert [m.name for m in models.models] == ["fraud"]
        # Under load on several connections, SIGTERM: every answered request is logged
        # once, both workers stop, and so does the supervisor, with 0.
        load = Load(gw.grpc_address).start()
        wait_until(lambda: len(load.answered) >= 300, timeout=60)
        pids = worker_pids(gw)
        assert gw.process is not None
        gw.process.send_signal(signal.SIGTERM)
        code = gw.process.wait(60)
        load.stop()
    finally:
        gw.stop()
    assert code == 0
    assert not any(alive(pid) for pid in pids)
    stored = stored_request_ids(data)
    assert len(stored) == len(set(stored)), "a request was logged twice"
    missing = set(load.answered) - set(stored)
    assert not missing, f"{len(missing)} answered requests not logged, e.g. {sorted(missing)[:3]}"
    # Calls caught by the stop are refused (UNAVAILABLE) or cut by the server's shutdown
    # (CANCELLED, as with one process); nothing fails otherwise.
    assert all(f.startswith(("UNAVAILABLE", "CANCELLED")) for f in load.failed), load.failed[:3]


@pytest.mark.slow
def test_workers_stop_by_themselves_when_the_supervisor_is_killed(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    config = write_config(tmp_path / "gateway.toml", {"fraud": model_files["logreg"]},
                          CONFIG)
    gw = workers_gateway(config, tmp_path / "data").start()
    try:
        pids = worker_pids(gw)
        assert gw.process is not None
        gw.process.kill()
        gw.process.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in pids))
    finally:
        gw.stop()
        for pid in pids:  # never leave one behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    # Nothing holds the port any more: a plain listener can have it.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", gw.ports["grpc"]))
