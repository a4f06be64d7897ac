"""``GetModel`` and ``gateway models show`` report what every replica serves: two
in-process gateways on one database (SQLite file), each publishing its serving state
(``gateway.replica_state``) under its ``[server] replica_id``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from gateway.pb import admin_pb2 as apb
from gateway.replica_state import ReplicaPublisher
from lifecycle.db import Database
from lifecycle.replicas import ReplicaStore
from loadtests.database_lock import write_locked
from tests import onnx_models
from tests.admin.cli_support import gateway_cli, ok
from tests.admin.helpers import OPERATOR_TOKEN, Admin
from tests.conftest import write_config
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

MODEL = "fraud"
SYNC_S = 0.2


def config_extra(replica_id: str) -> str:
    return (f'[server]\nreplica_id = "{replica_id}"\n'
            f"[traffic]\npolicy_sync_s = {SYNC_S}\n"
            f'[auth.tokens.ops]\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\n')


@pytest.fixture
def replicas(tmp_path: Path, model_files: dict[str, Path]
             ) -> Iterator[dict[str, InProcessGateway]]:
    """Replicas ``a`` and ``b`` sharing one data dir; a test may stop one (``pop`` it)."""
    running: dict[str, InProcessGateway] = {}
    try:
        for name in ("a", "b"):
            config = write_config(tmp_path / f"{name}.toml", {MODEL: model_files["logreg"]},
                                  config_extra(name))
            running[name] = InProcessGateway.start_from(config, tmp_path / "shared")
        yield running
    finally:
        for gateway in running.values():
            gateway.stop()


def get_model(gateway: InProcessGateway) -> apb.Model:
    with grpc.insecure_channel(gateway.admin_address) as channel:
        return Admin(channel).model(MODEL)


def by_id(model: apb.Model) -> dict[str, apb.ReplicaServing]:
    return {r.replica_id: r for r in model.replicas}


def all_serve(gateway: InProcessGateway, version: int, ids: tuple[str, ...] = ("a", "b")
              ) -> dict[str, apb.ReplicaServing]:
    """The replicas ``gateway`` reports once exactly ``ids`` serve ``version`` alone
    (empty until then)."""
    seen = by_id(get_model(gateway))
    done = sorted(seen) == sorted(ids) and all(
        r.served_version == version and list(r.loaded_versions) == [version] and r.ready
        for r in seen.values())
    return seen if done else {}


def test_every_replica_reports_the_version_it_serves(
        replicas: dict[str, InProcessGateway]) -> None:
    a, b = replicas["a"], replicas["b"]
    before = wait_until(lambda: all_serve(b, 1), 15, "both replicas serving version 1")
    assert [r.replica_id for r in get_model(a).replicas] == ["a", "b"]  # by id, on either
    for replica in before.values():
        assert replica.tracked and replica.host and replica.pid > 0
        assert not replica.stale and replica.age_s < 5
        assert replica.policy == "" and not replica.weights and not replica.failed_versions
        assert replica.start_time.seconds and replica.update_time.seconds
    # One control-plane leader: the replica that started first took the lease.
    assert [r.replica_id for r in before.values() if r.leader] == ["a"]

    with grpc.insecure_channel(a.admin_address) as channel:
        admin = Admin(channel)
        version = admin.register(MODEL, onnx_models.logreg_like_model(seed=7)).version.version
        admin.promote(MODEL, version)
    # a published right after its swap; b once it followed the alias (policy_sync_s).
    after = wait_until(lambda: all_serve(b, version), 15,
                       f"both replicas serving version {version}, as b reports")
    assert all_serve(a, version)
    assert after["a"].update_time.ToNanoseconds() >= before["a"].update_time.ToNanoseconds()


def test_a_replica_that_stops_cleanly_leaves_the_list(
        replicas: dict[str, InProcessGateway]) -> None:
    wait_until(lambda: all_serve(replicas["a"], 1), 15, "both replicas published")
    replicas.pop("b").stop()
    assert [r.replica_id for r in get_model(replicas["a"]).replicas] == ["a"]


def test_models_show_prints_the_replicas_table(
        replicas: dict[str, InProcessGateway]) -> None:
    a = replicas["a"]
    wait_until(lambda: all_serve(a, 1), 15, "both replicas published")
    out = ok(gateway_cli(a.admin_address, "models", "show", MODEL))
    table = out.split("\n\n")[-1].splitlines()
    assert table[0].split() == ["REPLICA", "LEADER", "SERVING", "VERSION", "LOADED", "READY",
                                "LAST", "SEEN"]
    rows = [line.split() for line in table[1:]]
    assert [row[:5] for row in rows] == [["a", "yes", "1", "1", "yes"],
                                        ["b", "no", "1", "1", "yes"]]
    assert all(row[5].endswith("s") and row[6] == "ago" for row in rows)

    shown = json.loads(ok(gateway_cli(a.admin_address, "models", "show", MODEL, "--json")))
    assert [(r["replica_id"], r["leader"], r["served_version"], r["loaded_versions"])
            for r in shown["replicas"]] == [("a", True, 1, [1]), ("b", False, 1, [1])]
    assert shown["replicas"][0]["update_time"].endswith("Z")


def test_a_publisher_logs_database_trouble_and_stops_once_withdrawn(
        replicas: dict[str, InProcessGateway], caplog: pytest.LogCaptureFixture) -> None:
    """Driven by hand beside gateway ``a``'s own: a locked database fails a publication
    (logged once, not raised), and nothing is published after ``withdraw``."""
    a = replicas["a"]
    assert a.app.manager is not None
    url = a.settings.effective_database_url
    database = Database.from_url(url)
    store = ReplicaStore(database)
    with ThreadPoolExecutor(1, "probe-db") as executor:
        publisher = ReplicaPublisher(store, a.app.manager, replica_id="probe",
                                     period_s=60.0, executor=executor)
        assert a.call(publisher.publish_once()) is True
        (probe,) = [r for r in store.list() if r.id == "probe"]
        assert probe.period_s == 60.0
        assert probe.models[MODEL].production == 1 and probe.models[MODEL].ready
        caplog.set_level(logging.INFO, "gateway.replicas")
        with write_locked(url):
            assert a.call(publisher.publish_once()) is False
            assert a.call(publisher.publish_once()) is False
        assert a.call(publisher.publish_once()) is True
        events = [getattr(r, "event", "") for r in caplog.records
                  if getattr(r, "replica", "") == "probe"]
        assert events == ["replica_publish_failed", "replica_publish_recovered"]
        a.call(publisher.withdraw())
        assert a.call(publisher.publish_once()) is False
        assert "probe" not in [r.id for r in store.list()]
    database.close()
