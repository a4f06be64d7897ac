"""Two replicas on one database and one artifact store: exactly one leads the lifecycle;
a retrain asked on the follower runs once, on the leader, under its epoch, and both
replicas end up serving the new version; when the leader stops, the follower takes over
within seconds and runs the next retrain itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.pb import admin_pb2 as apb
from lifecycle.db import Database, make_engine
from lifecycle.leases import LIFECYCLE_LEASE, Lease
from lifecycle.runs import RunStore
from tests.admin.helpers import Admin
from tests.lifecycle_loop.test_gateway_admin import OPERATOR, labelled_traffic
from tests.routing.test_alias_following import wait_until_served
from tests.support.inprocess import InProcessGateway
from tests.support.replicas import LEASE_S, MODEL, replica_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def start_replica(root: Path, name: str, url: str, artifact: Path, *,
                  lifecycle: bool = True) -> InProcessGateway:
    config = replica_config(root, name, url, artifact, lifecycle=lifecycle)
    return InProcessGateway.start_from(config, root / name)


@pytest.fixture
def store(database_url: str) -> Iterator[tuple[Database, RunStore]]:
    database = Database(make_engine(database_url))
    yield database, RunStore(database)
    database.close()


def holder(database: Database, lease: str = LIFECYCLE_LEASE) -> tuple[str, int]:
    found = Lease(database, replica="observer", name=lease).read()
    assert found is not None
    return found.holder, found.epoch


def retrain_on(gateway: InProcessGateway, reason: str) -> apb.Run:
    with grpc.insecure_channel(gateway.admin_address) as channel:
        return Admin(channel, OPERATOR).call("Retrain", apb.RetrainRequest(
            model=MODEL, reason=reason))


def finished(runs: RunStore, run_id: int, timeout_s: float = 120) -> None:
    wait_until(lambda: not runs.get(run_id).active, timeout_s, f"run {run_id} finished")


def test_one_leader_runs_a_retrain_asked_on_the_follower_once_and_both_serve_it(
        tmp_path: Path, database_url: str, model_files: dict[str, Path],
        store: tuple[Database, RunStore]) -> None:
    database, runs = store
    alpha = start_replica(tmp_path, "alpha", database_url, model_files["logreg"])
    beta = start_replica(tmp_path, "beta", database_url, model_files["logreg"])
    try:
        assert holder(database) == ("alpha", 1)
        with grpc.insecure_channel(alpha.admin_address) as channel:
            labelled_traffic(alpha, Admin(channel, OPERATOR), 300)

        asked = retrain_on(beta, "asked on the follower")
        assert (asked.status, asked.leader_epoch, asked.replica) == ("queued", 0, "")
        finished(runs, asked.id)
        run = runs.get(asked.id)
        assert (run.status, run.outcome, run.epoch, run.replica) == (
            "succeeded", "promoted", 1, "alpha"), run.error
        assert [r.id for r in runs.list(MODEL)] == [asked.id], "it ran once"
        assert run.candidate_version is not None
        for gateway in (alpha, beta):
            wait_until_served(gateway, str(run.candidate_version), 30)
    finally:
        beta.stop()
        alpha.stop()


def test_the_follower_takes_over_when_the_leader_stops(
        tmp_path: Path, database_url: str, model_files: dict[str, Path],
        store: tuple[Database, RunStore]) -> None:
    database, runs = store
    alpha = start_replica(tmp_path, "alpha", database_url, model_files["logreg"])
    beta = start_replica(tmp_path, "beta", database_url, model_files["logreg"])
    running = [beta, alpha]
    try:
        with grpc.insecure_channel(beta.admin_address) as channel:
            labelled_traffic(beta, Admin(channel, OPERATOR), 300)
        assert holder(database)[0] == "alpha"
        stopped = time.monotonic()
        running.remove(alpha)
        alpha.stop()
        wait_until(lambda: holder(database) == ("beta", 2), 4 * LEASE_S, "beta leads")
        assert time.monotonic() - stopped < 4 * LEASE_S

        asked = retrain_on(beta, "after the takeover")
        assert (asked.leader_epoch, asked.replica) == (2, "beta")
        finished(runs, asked.id)
        run = runs.get(asked.id)
        assert (run.status, run.epoch, run.replica) == ("succeeded", 2, "beta"), run.error
    finally:
        for gateway in running:
            gateway.stop()


def test_a_replica_with_the_lifecycle_off_never_takes_it_and_refuses_retrains_clearly(
        tmp_path: Path, database_url: str, model_files: dict[str, Path],
        store: tuple[Database, RunStore]) -> None:
    database, runs = store
    serving = start_replica(tmp_path, "serving", database_url, model_files["logreg"],
                            lifecycle=False)
    trainer = start_replica(tmp_path, "trainer", database_url, model_files["logreg"])
    try:
        assert holder(database, "control")[0] == "serving"  # first up: the experiment loops
        assert holder(database) == ("trainer", 1)  # the only candidate for the lifecycle
        with grpc.insecure_channel(serving.admin_address) as channel:
            admin = Admin(channel, OPERATOR)
            labelled_traffic(serving, admin, 300)
            with pytest.raises(grpc.RpcError) as refused:
                admin.call("Retrain", apb.RetrainRequest(model=MODEL))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "lifecycle is disabled on this gateway" in (refused.value.details() or "")
        asked = retrain_on(trainer, "on the training replica")
        finished(runs, asked.id)
        run = runs.get(asked.id)
        assert (run.status, run.replica) == ("succeeded", "trainer"), run.error
        assert run.candidate_version is not None
        wait_until_served(serving, str(run.candidate_version), 30)
    finally:
        trainer.stop()
        serving.stop()
