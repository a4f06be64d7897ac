"""A real in-process gateway whose ``[database] url`` is PostgreSQL: the registry, the
aliases, the request log and feedback all live there. Register and promote through the
admin API, serve the promoted version, find every inference logged once with its
tensors and its label joined; and with the PostgreSQL server stopped and restarted under
load, no inference fails and every record lands exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.pb import admin_pb2 as apb
from lifecycle.db import Database, make_engine
from lifecycle.request_store import RequestStore
from tests import onnx_models
from tests.conftest import write_config
from tests.request_log.gateway_support import (
    AUTH_CONFIG,
    Clients,
    assert_an_outage_loses_nothing,
    by_request_id,
    features,
    flushed,
)
from tests.support.databases import PostgresServer, only
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

pytestmark = only("postgresql")


def start_gateway(root: Path, url: str, models: dict[str, Path]) -> InProcessGateway:
    extra = f"""
[database]
url = "{url}"
[request_log]
flush_interval_ms = 20
"""
    config = write_config(root / "gateway.toml", models, AUTH_CONFIG + extra)
    server = InProcessGateway.start_from(config, root / "data")
    assert server.settings.effective_database_url == url
    return server


@pytest.fixture
def gateway(database_url: str, tmp_path: Path,
            model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    server = start_gateway(tmp_path, database_url, {"fraud": model_files["logreg"]})
    yield server
    server.stop()


@pytest.fixture
def clients(gateway: InProcessGateway) -> Iterator[Clients]:
    c = Clients(gateway.grpc_address, gateway.admin_address)
    yield c
    c.close()


def register(clients: Clients, model: str, data: bytes) -> apb.RegisterVersionResponse:
    def upload() -> Iterator[apb.RegisterVersionRequest]:
        yield apb.RegisterVersionRequest(header=apb.RegisterVersionHeader(model=model))
        for start in range(0, len(data), 4096):
            yield apb.RegisterVersionRequest(chunk=data[start:start + 4096])

    return clients.admin.RegisterVersion(upload(), metadata=clients.auth, timeout=60)


def test_registry_serving_request_log_and_feedback_on_postgresql(
        gateway: InProcessGateway, clients: Clients, database_url: str) -> None:
    # The config seeded version 1 into PostgreSQL and serves it.
    assert clients.infer("fraud", "warmup", features(0)).model_version == "1"

    registered = register(clients, "fraud", onnx_models.logreg_like_model(seed=7))
    assert registered.version.version == 2
    change = clients.admin.Promote(apb.PromoteRequest(model="fraud", version=2),
                                   metadata=clients.auth, timeout=60)
    assert (change.previous_version, change.version) == (1, 2)
    wait_until(lambda: clients.infer("fraud", "probe", features(0)).model_version == "2", 30,
               "version 2 served")

    sent = {f"pg-{i}": features(i, rows=1 + i % 2) for i in range(40)}
    answers = {rid: clients.infer("fraud", rid, x) for rid, x in sent.items()}
    assert {a.model_version for a in answers.values()} == {"2"}
    # Half the labels before the request is written, half after (the join is at query time).
    for i, rid in enumerate(sent):
        if i % 2 == 0:
            clients.label("fraud", rid, class_label=i % 3)
    flushed(gateway)
    for i, rid in enumerate(sent):
        if i % 2 == 1:
            clients.label("fraud", rid, class_label=i % 3)
    clients.label("fraud", "pg-1", class_label=2)  # a second submission: the latest wins
    flushed(gateway)

    found = by_request_id(clients.query("fraud"))
    for i, (rid, x) in enumerate(sent.items()):
        (record,) = found[rid]
        assert record.version == 2 and record.status == "OK"
        assert record.inputs[0].data == x.tobytes()  # NaN and -0.0 included
        assert [o.data for o in record.outputs] == list(answers[rid].raw_output_contents)
        expected = 2 if rid == "pg-1" else i % 3
        assert record.feedback.label.class_label == expected, rid
        assert record.feedback.count == (2 if rid == "pg-1" else 1)

    # And the rows really are in PostgreSQL, with the registry's story beside them.
    database = Database(make_engine(database_url))
    try:
        assert database.dialect == "postgresql"
        assert RequestStore(database).count("fraud", has_feedback=True) == len(sent)
        with database.read() as session:
            actions = session.execute(text(
                "SELECT action FROM events WHERE model = 'fraud' ORDER BY id")).scalars().all()
            production = session.execute(text(
                "SELECT version FROM aliases WHERE model = 'fraud' AND alias = 'production'"
            )).scalar_one()
        assert actions.count("version.register") == 2 and "alias.set" in actions
        assert production == 2
    finally:
        database.close()


def test_postgresql_stopped_and_restarted_under_load_fails_no_inference_and_loses_nothing(
        gateway: InProcessGateway, clients: Clients, postgres_server: PostgresServer) -> None:
    assert_an_outage_loses_nothing(gateway, clients, "fraud", postgres_server.stopped())
