"""Replica faults, with two ``gateway serve`` processes on one PostgreSQL and one artifact
store:

- the leader killed (SIGKILL) while a run trains: the other replica takes the lease over
  within seconds, fails the orphaned run, registers nothing of it, promotes nothing twice,
  and runs the next retrain itself;
- two operators promoting different versions on the two replicas at the same moment: both
  calls answer, the alias ends on one of them (the last write), and both replicas serve
  that version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.pb import admin_pb2 as apb
from lifecycle.db import Database, make_engine
from lifecycle.domain import PRODUCTION
from lifecycle.leases import LIFECYCLE_LEASE, Lease
from lifecycle.registry import Registry
from lifecycle.runs import RunStore
from tests import onnx_models
from tests.admin.helpers import Admin
from tests.lifecycle_loop.estimators import SLEEP_ENV
from tests.lifecycle_loop.test_gateway_admin import OPERATOR, labelled_traffic
from tests.routing.test_alias_following import served_version
from tests.support.databases import only
from tests.support.replicas import LEASE_S, MODEL, replica_config
from tests.support.subprocess_gateway import SubprocessGateway
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, only("postgresql")]


def replica(root: Path, name: str, url: str, artifact: Path, *, sleep_s: float = 0
            ) -> SubprocessGateway:
    config = replica_config(root, name, url, artifact,
                            estimator="tests.lifecycle_loop.estimators.SleepingClassifier")
    return SubprocessGateway(config, root / name, env={SLEEP_ENV: str(sleep_s)})


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(make_engine(database_url))
    yield db
    db.close()


def lease_holder(db: Database) -> tuple[str, int] | None:
    found = Lease(db, replica="observer", name=LIFECYCLE_LEASE).read()
    return None if found is None else (found.holder, found.epoch)


def admin_call(gateway: SubprocessGateway, method: str, request: object) -> object:
    with grpc.insecure_channel(gateway.admin_address) as channel:
        return Admin(channel, OPERATOR).call(method, request)


def test_the_leader_killed_mid_retrain_is_replaced_and_its_run_failed_without_a_trace(
        tmp_path: Path, database_url: str, database: Database,
        model_files: dict[str, Path]) -> None:
    runs, registry = RunStore(database), Registry(database)
    # alpha trains for a minute (it will not live that long); beta trains at once.
    alpha = replica(tmp_path, "alpha", database_url, model_files["logreg"], sleep_s=60).start()
    beta = replica(tmp_path, "beta", database_url, model_files["logreg"]).start()
    try:
        assert lease_holder(database) == ("alpha", 1)
        with grpc.insecure_channel(beta.admin_address) as channel:
            labelled_traffic(beta, Admin(channel, OPERATOR), 300)  # type: ignore[arg-type]

        asked = admin_call(beta, "Retrain", apb.RetrainRequest(model=MODEL))
        run_id = asked.id  # type: ignore[attr-defined]
        wait_until(lambda: (runs.get(run_id).step("train") or None) is not None, 60,
                   "the leader training the run")
        assert runs.get(run_id).replica == "alpha"
        versions_before = [v.version for v in registry.list_versions(MODEL)]

        assert alpha.process is not None
        alpha.process.kill()
        alpha.process.wait(10)
        killed = time.monotonic()
        wait_until(lambda: lease_holder(database) == ("beta", 2), 10, "beta leading")
        taken_over_s = time.monotonic() - killed
        wait_until(lambda: not runs.get(run_id).active, 10, "the orphaned run failed")
        orphan = runs.get(run_id)
        assert orphan.status == "failed" and "abandoned" in orphan.error, orphan.error
        assert orphan.candidate_version is None
        assert [v.version for v in registry.list_versions(MODEL)] == versions_before
        assert registry.get_aliases(MODEL)[PRODUCTION] == 1
        assert taken_over_s < 4 * LEASE_S + 2

        again = admin_call(beta, "Retrain", apb.RetrainRequest(model=MODEL))
        assert (again.leader_epoch, again.replica) == (2, "beta")  # type: ignore[attr-defined]
        wait_until(lambda: not runs.get(again.id).active, 120,  # type: ignore[attr-defined]
                   "the retrain on the new leader")
        done = runs.get(again.id)  # type: ignore[attr-defined]
        assert (done.status, done.outcome) == ("succeeded", "promoted"), done.error
        moves = [e.version for e in registry.list_events(model=MODEL, action="alias.set")
                 if e.detail.get("alias") == PRODUCTION]
        assert moves.count(done.candidate_version) == 1, moves
        assert registry.get_aliases(MODEL)[PRODUCTION] == done.candidate_version
        wait_until(lambda: served_version(beta) == str(done.candidate_version), 30,
                   "beta serving the new version")
    finally:
        beta.stop()
        alpha.stop()


def test_two_operators_promoting_different_versions_at_once_converge(
        tmp_path: Path, database_url: str, database: Database,
        model_files: dict[str, Path]) -> None:
    registry = Registry(database)
    alpha = replica(tmp_path, "alpha", database_url, model_files["logreg"]).start()
    beta = replica(tmp_path, "beta", database_url, model_files["logreg"]).start()
    try:
        with grpc.insecure_channel(alpha.admin_address) as channel:
            admin = Admin(channel, OPERATOR)
            for seed in (2, 3):
                admin.register(MODEL, onnx_models.logreg_like_model(seed=seed + 10))
        barrier = threading.Barrier(2)
        answers: dict[str, object] = {}

        def promote(gateway: SubprocessGateway, version: int) -> None:
            with grpc.insecure_channel(gateway.admin_address) as channel:
                stub = Admin(channel, OPERATOR)
                barrier.wait()
                answers[gateway.data_dir.name] = stub.call("Promote", apb.PromoteRequest(
                    model=MODEL, version=version))

        threads = [threading.Thread(target=promote, args=(alpha, 2)),
                   threading.Thread(target=promote, args=(beta, 3))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(answers) == ["alpha", "beta"], "both operators got an answer"
        winner = registry.get_aliases(MODEL)[PRODUCTION]
        assert winner in (2, 3)
        for gateway in (alpha, beta):
            wait_until(lambda g=gateway: served_version(g) == str(winner), 30,  # type: ignore[misc]
                       f"{gateway.data_dir.name} serving version {winner}")
        # And they stay there: nothing flips back.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert {served_version(alpha), served_version(beta)} == {str(winner)}
    finally:
        beta.stop()
        alpha.stop()
