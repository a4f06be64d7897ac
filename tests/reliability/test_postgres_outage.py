"""PostgreSQL stopped and restarted under load, beneath a ``gateway serve`` process whose
``[database] url`` is PostgreSQL (registry, aliases, runs, request log and feedback all
live there).

While the server is down: no inference fails and readiness stays SERVING (serving needs
no database); the request log and the feedback spill to the journal; every admin call
that needs the database answers ``UNAVAILABLE`` saying the database is unavailable, at
once (well inside its deadline), never UNKNOWN/INTERNAL or a hang. Once it is back: the
first admin calls succeed, a promotion takes effect, the background loops (the lifecycle
scheduler, the poll that follows moves made by other replicas) got over it, the journal
replays, and every answered request and every feedback sent during the outage is in the
database exactly once. Nothing but the database's absence is logged as an error.

tests/request_log/test_postgres_gateway.py covers the request log alone against an
in-process gateway; this scenario adds the control plane, a real process and the feedback.
It stops the server: run it only under a server of its own (``scripts/pg-test.sh``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc, feedback_pb2_grpc
from gateway.pb import feedback_pb2 as fpb
from gateway.pb import grpc_service_pb2 as pb
from lifecycle.db import Database, make_engine
from lifecycle.registry import Registry
from tests import onnx_models
from tests.reliability.conftest import AUTH_CONFIG, OPERATOR
from tests.reliability.support import ClosedLoad, ReadinessWatch, make_request
from tests.request_log.gateway_support import metric, metrics
from tests.support.databases import PostgresServer, only
from tests.support.subprocess_gateway import SubprocessGateway
from tests.support.waiting import wait_until

pytestmark = [only("postgresql"), pytest.mark.slow]
ADMIN_DEADLINE_S = 10.0
PROMPT_S = 3.0  # an admin call refused for want of the database answers within this
OK = grpc.StatusCode.OK
# How psycopg words a server that is stopping or stopped (in logged tracebacks).
DATABASE_DOWN = ("Connection refused", "the database system is shutting down",
                 "server closed the connection unexpectedly", "database unavailable")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def write_config(root: Path, artifact: Path, url: str) -> Path:
    path = root / "gateway.toml"
    path.write_text(AUTH_CONFIG + f"""
[database]
url = "{url}"

[request_log]
flush_interval_ms = 50

[traffic]
policy_sync_s = 0.5 # the poll of moves made elsewhere runs during the outage

[lifecycle]
poll_s = 0.5        # the scheduler re-reads its triggers during the outage

[models.fraud]
artifact = "{artifact}"

[models.fraud.lifecycle]
min_rows = 100000   # never enough rows: no retraining run starts during the test

[[models.fraud.lifecycle.triggers]]
kind = "interval"
seconds = 3600
""")
    return path


def fraud_request(request_id: str) -> pb.ModelInferRequest:
    return make_request("fraud", "features", 1, 20, request_id)


class Admin:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)

    def __call__(self, method: str, request: Any) -> Any:
        call = getattr(self.stub, method)
        if method == "QueryRequests":  # server streaming
            return list(call(request, metadata=OPERATOR, timeout=ADMIN_DEADLINE_S))
        return call(request, metadata=OPERATOR, timeout=ADMIN_DEADLINE_S)

    def close(self) -> None:
        self.channel.close()


def upload(model: str, data: bytes) -> Iterator[apb.RegisterVersionRequest]:
    yield apb.RegisterVersionRequest(header=apb.RegisterVersionHeader(model=model))
    yield apb.RegisterVersionRequest(chunk=data)


# Every admin call below needs the database; none may answer from a stale copy.
NEEDS_DATABASE: dict[str, Callable[[], tuple[str, Any]]] = {
    "ListModels": lambda: ("ListModels", apb.ListModelsRequest()),
    "GetModel": lambda: ("GetModel", apb.GetModelRequest(name="fraud")),
    "ListVersions": lambda: ("ListVersions", apb.ListVersionsRequest(model="fraud")),
    "GetVersion": lambda: ("GetVersion", apb.GetVersionRequest(model="fraud", version=2)),
    "SetAlias": lambda: ("SetAlias", apb.SetAliasRequest(model="fraud", alias="staging",
                                                         version=2)),
    "Promote": lambda: ("Promote", apb.PromoteRequest(model="fraud", version=2)),
    "Rollback": lambda: ("Rollback", apb.RollbackRequest(model="fraud")),
    "ListEvents": lambda: ("ListEvents", apb.ListEventsRequest(model="fraud")),
    "ListRuns": lambda: ("ListRuns", apb.ListRunsRequest(model="fraud")),
    "ListTriggers": lambda: ("ListTriggers", apb.ListTriggersRequest(model="fraud")),
    "QueryRequests": lambda: ("QueryRequests", apb.QueryRequestsRequest(
        model="fraud", omit_payload=True, limit=10)),
    "ListUnmatchedFeedback": lambda: ("ListUnmatchedFeedback",
                                      apb.ListUnmatchedFeedbackRequest(model="fraud")),
}


def refusal(admin: Admin, name: str) -> tuple[str, str, float]:
    """(status name, message, seconds) of one admin call made while the database is down."""
    method, request = NEEDS_DATABASE[name]()
    started = time.monotonic()
    try:
        admin(method, request)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", time.monotonic() - started
    return "OK", "", time.monotonic() - started


def http_ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                    timeout=5) as page:
            return page.status
    except urllib.error.HTTPError as exc:
        return exc.code


def health_check(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def rows_by_request_id(url: str, table: str) -> dict[str, int]:
    """How many rows of ``table`` (``request_log`` or ``feedback``) each request id has."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                f"SELECT request_id, count(*) FROM {table} WHERE model = 'fraud' "  # noqa: S608
                "GROUP BY request_id")).all()
    finally:
        engine.dispose()
    return {request_id: count for request_id, count in rows}


def test_postgresql_stopped_and_restarted_under_load(
        tmp_path: Path, model_files: dict[str, Path], database_url: str,
        postgres_server: PostgresServer) -> None:
    config = write_config(tmp_path, model_files["logreg"], database_url)
    gw = SubprocessGateway(config, tmp_path / "data").start()
    admin = Admin(gw.admin_address)
    feedback_channel = grpc.insecure_channel(gw.grpc_address)
    feedback = feedback_pb2_grpc.FeedbackServiceStub(feedback_channel)
    http = gw.ports["http"]
    load = ClosedLoad(gw.grpc_address, fraud_request, "pg", threads=4)
    watch = ReadinessWatch(gw.grpc_address, hang_up=False)
    try:
        admin("RegisterVersion", upload("fraud", onnx_models.logreg_like_model(seed=7)))
        assert dict(admin("GetModel", apb.GetModelRequest(name="fraud")).aliases) == {
            "production": 1}
        watch.start()
        load.start()
        load.wait_for(lambda o: sum(x.code == OK for x in o) >= 200, 60,
                      "200 answered requests before the outage")
        before: Samples = metrics(http)

        def spilled(samples: Samples, kind: str) -> float:
            return (metric(samples, "gateway_request_log_spilled_total", kind=kind)
                    - metric(before, "gateway_request_log_spilled_total", kind=kind))

        postgres_server.stop()
        try:
            down_at = time.monotonic()
            answered_before = len(load.ok())
            # (b) Every admin call that needs the database: UNAVAILABLE, saying so, at once.
            refusals = {name: refusal(admin, name) for name in NEEDS_DATABASE}
            # Feedback for requests answered during the outage: accepted (journaled).
            load.wait_for(lambda o: sum(x.code == OK for x in o) >= answered_before + 20,
                          30, "20 answers during the outage")
            labelled = {o.request_id: i % 2 for i, o in enumerate(
                [o for o in load.ok() if o.sent > down_at][:20])}
            feedback_ids = {rid: feedback.SubmitFeedback(fpb.Feedback(
                model="fraud", request_id=rid, class_label=label), timeout=10).feedback_id
                for rid, label in labelled.items()}
            # (a) and (c): serving goes on; the log and the feedback spill to the journal.
            def spilling() -> Samples | None:
                s = metrics(http)
                return s if (spilled(s, "request") >= 100
                             and spilled(s, "feedback") >= len(labelled)
                             and metric(s, "gateway_request_log_backlog_bytes") > 0) else None

            during = wait_until(spilling, 30, "records spilled to the journal")
            load.wait_for(lambda o: sum(x.code == OK and x.sent > down_at for x in o) >= 300,
                          30, "300 answers during the outage")
            ready_during = (http_ready(http), health_check(gw.grpc_address))
            # Asked again late in the outage (pooled connections long gone): the same.
            late = {name: refusal(admin, name) for name in ("GetModel", "Promote")}
            # The background loops met the outage too (and must get over it): the
            # lifecycle scheduler's trigger poll, and the poll of policy moves.
            wait_until(lambda: all(event in gw.log_path.read_text() for event in (
                "trigger_sync_failed", "policy_sync_failed")), 15, "the polls failing")
            answered_during = sum(o.code == OK and o.sent > down_at for o in load.ok())
        finally:
            postgres_server.start()
        up_at = time.monotonic()

        # Back: the first admin calls succeed, and a promotion takes effect.
        model = admin("GetModel", apb.GetModelRequest(name="fraud"))
        change = admin("Promote", apb.PromoteRequest(model="fraud", version=2))
        load.wait_for(lambda o: any(x.version == "2" and x.sent > up_at for x in o), 30,
                      "version 2 served after the promotion")
        # Production moved back by another replica (straight in the database): the poll
        # of moves made elsewhere got over the outage and follows it.
        elsewhere = Database(make_engine(database_url))
        try:
            Registry(elsewhere).set_alias("fraud", "production", 1, actor="replica-b")
        finally:
            elsewhere.close()
        moved_at = time.monotonic()
        load.wait_for(lambda o: sum(x.version == "1" and x.sent > moved_at for x in o) >= 100,
                      30, "100 answers from version 1 after the move elsewhere")
        load.stop()
        answered = {o.request_id for o in load.ok()}

        def replayed() -> Samples | None:
            s = metrics(http)
            done = (metric(s, "gateway_request_log_backlog_bytes") == 0
                    and metric(s, "gateway_request_log_queue_depth") == 0
                    and metric(s, "gateway_request_log_replayed_total", kind="request")
                    >= spilled(s, "request")
                    and metric(s, "gateway_request_log_replayed_total", kind="feedback")
                    >= spilled(s, "feedback"))
            return s if done and answered <= set(rows_by_request_id(database_url,
                                                                    "request_log")) else None

        try:
            after = wait_until(replayed, 60, "the journal replayed and every answer logged")
        except AssertionError:
            after = metrics(http)  # the assertions below say what is missing
        logged = rows_by_request_id(database_url, "request_log")
        labels = rows_by_request_id(database_url, "feedback")
        joined = {r.request_id: r.feedback for r in admin("QueryRequests", apb.QueryRequestsRequest(
            model="fraud", omit_payload=True, has_feedback=True))}
        final = admin("GetModel", apb.GetModelRequest(name="fraud"))
        triggers = admin("ListTriggers", apb.ListTriggersRequest(model="fraud"))
    finally:
        load.stop()
        watch.close()
        feedback_channel.close()
        admin.close()
        exit_code = gw.stop()

    # Nothing went wrong but the database: no RPC turned INTERNAL, every error logged is
    # the database being unreachable; and the process exited 0.
    records = [json.loads(line) for line in gw.log_path.read_text().splitlines()]
    assert not [r for r in records if r.get("event") == "internal_error"]
    unexpected = [r for r in records if r["level"] in ("error", "critical")
                  and not any(words in json.dumps(r) for words in DATABASE_DOWN)]
    assert not unexpected, unexpected[:3]
    assert exit_code == 0

    # (a) Zero failed inferences, before, during and after the outage.
    failed = [o for o in load.outcomes if o.code != OK]
    assert not failed, [(o.request_id, o.code.name, o.details) for o in failed[:5]]
    assert answered_during >= 300
    # Readiness never left SERVING (the watch saw nothing else; /ready and Check agreed).
    assert [s for _, s in watch.statuses] == ["SERVING"], watch.statuses
    assert ready_during == (200, "SERVING")

    # (b) Refused for want of the database: UNAVAILABLE, saying so, promptly.
    for name, (code, message, seconds) in {**refusals, **{f"{k} (late)": v
                                                         for k, v in late.items()}}.items():
        assert code == "UNAVAILABLE", f"{name}: {code}: {message}"
        assert "database" in message.lower() and "unavailable" in message.lower(), (
            f"{name}: {message}")
        assert seconds < PROMPT_S, f"{name} took {seconds:.1f} s to be refused"

    # (c) The journal took the log and the feedback while the database was down.
    assert spilled(during, "request") >= 100
    assert spilled(during, "feedback") >= len(labelled)

    # After the restart: admin calls work and the promotion took effect.
    assert dict(model.aliases) == {"production": 1}
    assert (change.previous_version, change.version) == (1, 2)
    assert dict(final.aliases)["production"] == 1 and final.served_version == 1
    # The scheduler got over it: still running, its trigger still scheduled.
    assert triggers.scheduler_running
    assert [t.HasField("next_fire_time") for t in triggers.triggers] == [True]

    # Every answered request logged exactly once: no loss, no duplicate.
    assert not answered - set(logged), f"{len(answered - set(logged))} answers not logged"
    twice = {rid: n for rid, n in logged.items() if n > 1}
    assert not twice, f"logged more than once: {list(twice.items())[:5]}"
    assert set(logged) == answered  # failed calls would be logged too: there were none
    # Every feedback of the outage stored once and joined to its request.
    assert {rid: labels.get(rid) for rid in labelled} == dict.fromkeys(labelled, 1)
    for rid, label in labelled.items():
        assert joined[rid].feedback_id == feedback_ids[rid]
        assert joined[rid].label.class_label == label
    assert metric(after, "gateway_request_log_dropped_total", reason="journal_full") == 0
    assert metric(after, "gateway_request_log_dropped_total", reason="queue_full") == 0
    print(f"postgres outage: {len(answered)} answered ({answered_during} during the outage), "
          f"{int(spilled(after, 'request'))} requests and {int(spilled(after, 'feedback'))} "
          f"feedback spilled and replayed; refusals in "
          f"{max(s for _, _, s in refusals.values()):.3f} s at most")
