"""SIGTERM under load on a ``gateway serve`` process.

What must hold: readiness turns false first (the health Watch is told NOT_SERVING, and
the gateway serves on for 50 ms before it refuses anything); every request sent before
the signal — running in the inference pool or queued for it — completes OK; new requests
get UNAVAILABLE while a long request is still being served (from the draining servicer,
so the status is a deliberate, retryable one), and once the process is gone; every
answered request is in the request log's database when the process has exited, with
nothing left in the journal; the process exits 0 within ``server.shutdown_grace_s``.

The clients fail over after their first refusal, as a client of several replicas would:
grpc CANCELS the calls it has received but not handed to the servicer at the instant the
server stops (grpc/grpc#41785); the gateway keeps that instant clear of work by draining
first, but a client still hammering right then could see it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc
from gateway.pb import grpc_service_pb2 as pb
from gateway.pb import grpc_service_pb2_grpc as pb_grpc
from gateway.rpc.inference_servicer import SHUTTING_DOWN
from tests import onnx_models
from tests.conftest import write_config
from tests.reliability.conftest import AUTH_CONFIG, OPERATOR
from tests.reliability.support import (
    ClosedLoad,
    Outcome,
    ReadinessWatch,
    journal_backlog,
    logged_request_ids,
    make_request,
    spin_model,
    spin_request,
)
from tests.support.subprocess_gateway import SubprocessGateway
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
GRACE_S = 5.0
SPIN_TARGET_S = 1.0  # how long the request held in flight across the signal runs
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def drain_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``mlp``: a fraction of a millisecond a request; ``spin``: as long as asked."""
    root = tmp_path_factory.mktemp("drain-models")
    (root / "mlp.onnx").write_bytes(onnx_models.mlp_model())
    (root / "spin.onnx").write_bytes(spin_model())
    return {"mlp": root / "mlp.onnx", "spin": root / "spin.onnx"}


def serve(tmp_path: Path, models: dict[str, Path], grace_s: float) -> SubprocessGateway:
    # inline_max_us = 0: every model runs in the inference pool (two threads), so under
    # load requests are running there and queued for it when the signal comes.
    config = write_config(tmp_path / "gateway.toml", models,
                          f"[server]\nshutdown_grace_s = {grace_s}\ninline_max_us = 0\n"
                          + AUTH_CONFIG + "[request_log]\nflush_interval_ms = 50\n")
    return SubprocessGateway(config, tmp_path / "data").start()


def mlp_request(request_id: str) -> pb.ModelInferRequest:
    return make_request("mlp", "x", 16, 64, request_id)


def spin_rounds(address: str, target_s: float) -> int:
    """Rounds of the spin model that take about ``target_s`` on this machine, idle."""
    rounds = 20_000
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(spin_request(rounds, "calibrate-0"), timeout=60)
        started = time.monotonic()
        stub.ModelInfer(spin_request(rounds, "calibrate-1"), timeout=60)
        elapsed = time.monotonic() - started
    return max(rounds, int(rounds * target_s / elapsed))


def test_sigterm_under_load_drains_refuses_logs_and_exits_in_the_grace(
        tmp_path: Path, drain_models: dict[str, Path]) -> None:
    gw = serve(tmp_path, drain_models, GRACE_S)
    assert gw.process is not None
    rounds = spin_rounds(gw.grpc_address, SPIN_TARGET_S)
    watch = ReadinessWatch(gw.grpc_address).start()
    load = ClosedLoad(gw.grpc_address, mlp_request, "term", threads=6,
                      until_refused=True).start()
    held: list[Outcome] = []
    try:
        load.wait_for(lambda outcomes: sum(o.code == OK for o in outcomes) >= 200,
                      what="200 answered requests")
        wait_until(lambda: watch.statuses, 10, "the first health status")

        def long_request() -> None:
            sent = time.monotonic()
            with grpc.insecure_channel(gw.grpc_address) as channel:
                try:
                    response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                        spin_request(rounds, "held-0"), timeout=60)
                    held.append(Outcome("held-0", sent, time.monotonic(), OK,
                                        response.model_version))
                except grpc.RpcError as exc:
                    held.append(Outcome("held-0", sent, time.monotonic(), exc.code(),
                                        details=exc.details() or ""))

        held_thread = threading.Thread(target=long_request, daemon=True)
        held_thread.start()
        with grpc.insecure_channel(gw.admin_address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            wait_until(lambda: admin.GetModel(apb.GetModelRequest(name="spin"),
                                              metadata=OPERATOR, timeout=10).in_flight >= 1,
                       30, "the long request in flight")
        signalled = time.monotonic()
        os.kill(gw.process.pid, signal.SIGTERM)
        returncode = gw.process.wait(GRACE_S + 30)
        exited = time.monotonic()
        held_thread.join(60)
        load.stop()
        with grpc.insecure_channel(gw.grpc_address) as channel, pytest.raises(
                grpc.RpcError) as after_exit:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(mlp_request("after"),
                                                                 timeout=10)
    finally:
        load.stop()
        watch.close()
        gw.stop()

    outcomes = sorted([*load.outcomes, *held], key=lambda o: o.sent)
    assert returncode == 0, gw.log_path.read_text()[-3000:]
    assert exited - signalled <= GRACE_S, f"exit took {exited - signalled:.2f} s"

    # Readiness false first: NOT_SERVING pushed before any request was refused.
    assert [s for _, s in watch.statuses] == ["SERVING", "NOT_SERVING"], watch.statuses
    not_serving = watch.first("NOT_SERVING")
    assert not_serving is not None and signalled < not_serving
    refused = [o for o in outcomes if o.code != OK]
    assert len(refused) == load.threads, "every client is refused once, then fails over"
    assert {(o.code, o.details) for o in refused} == {(UNAVAILABLE, SHUTTING_DOWN)}, refused
    assert not_serving <= min(o.done for o in refused)

    # In flight or queued at the signal: completed, OK.
    before_signal = [o for o in outcomes if o.sent < signalled]
    assert all(o.code == OK for o in before_signal), [
        (o.request_id, o.code.name, o.details) for o in before_signal if o.code != OK]
    assert held and held[0].code == OK, held
    # New requests were refused while the long one was still being served, and after.
    assert max(o.done for o in refused) < held[0].done, "a refusal only after the drain"
    assert after_exit.value.code() == UNAVAILABLE

    # The log holds every answered request, once; the journal holds nothing.
    answered = [o.request_id for o in outcomes if o.code == OK]
    logged = logged_request_ids(gw.data_dir, "mlp", "spin")
    assert len(logged) == len(set(logged)), "a request was logged twice"
    missing = set(answered) - set(logged)
    assert not missing, f"{len(missing)} answered requests not in the request log"
    assert journal_backlog(gw.data_dir / "request-log") == 0
    drained = sum(1 for o in outcomes if o.sent < signalled < o.done)
    print(f"SIGTERM: {len(answered)} answered ({drained} in flight at the signal, the long "
          f"one {held[0].done - held[0].sent:.2f} s), {len(refused)} refused; after the "
          f"signal: NOT_SERVING {not_serving - signalled:+.3f} s, first refusal "
          f"{min(o.done for o in refused) - signalled:+.3f} s, exit {exited - signalled:.2f} s")


def test_held_streams_on_both_ports_cost_one_grace_not_two(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    """A client stream left open on the inference port and another on the admin port:
    each is cut at the end of the grace, and the two ports drain together, so the exit
    comes one grace after the signal (plus the log flush and teardown)."""
    grace_s = 2.0
    gw = serve(tmp_path, {"fraud": model_files["logreg"]}, grace_s)
    assert gw.process is not None
    hold = threading.Event()
    ends: dict[str, str] = {}

    def messages() -> Iterator[pb.ModelInferRequest]:
        yield make_request("fraud", "features", 1, 20, "held-0")
        hold.wait(60)

    inference = grpc.insecure_channel(gw.grpc_address)
    watch = ReadinessWatch(gw.admin_address, hang_up=False)
    try:
        stream = pb_grpc.GRPCInferenceServiceStub(inference).ModelStreamInfer(
            messages(), timeout=60)
        assert not next(stream).error_message  # the stream is live
        watch.start()
        wait_until(lambda: watch.statuses, 10, "the admin health stream")
        signalled = time.monotonic()
        os.kill(gw.process.pid, signal.SIGTERM)
        returncode = gw.process.wait(4 * grace_s + 30)
        elapsed = time.monotonic() - signalled
        try:
            next(stream)
        except grpc.RpcError as exc:
            ends["inference"] = exc.code().name
    finally:
        hold.set()
        inference.close()
        watch.close()
        gw.stop()
    assert returncode == 0
    assert grace_s <= elapsed <= grace_s + 1.5, f"exit took {elapsed:.2f} s"
    assert [s for _, s in watch.statuses] == ["SERVING", "NOT_SERVING"]
    assert watch.ended in ("CANCELLED", "UNAVAILABLE")
    assert ends["inference"] in ("CANCELLED", "UNAVAILABLE")
