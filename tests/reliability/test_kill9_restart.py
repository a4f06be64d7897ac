"""kill -9 of a ``gateway serve`` process under inference load *and* concurrent admin
writes, then a restart on the same data directory and config.

tests/request_log/test_gateway_process.py covers the request log alone (the loss window
after kill -9); this scenario covers the control plane around it. What must survive:
the registry (versions, statuses), every alias (production, its rollback history, and a
``staging`` alias being moved at the moment of the kill — it ends on the last
acknowledged move or the one in flight, and agrees with the audit trail), explicit loads,
the traffic policy, the triggers set over the API (not reset to the config's), every
acknowledged audit event; the journal is replayed and no log row is duplicated.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from gateway.pb import admin_pb2 as apb
from gateway.pb import admin_pb2_grpc
from gateway.pb import grpc_service_pb2 as pb
from loadtests.database_lock import write_locked
from tests import onnx_models
from tests.reliability.conftest import AUTH_CONFIG, OPERATOR
from tests.reliability.support import ClosedLoad, journal_backlog, make_request
from tests.request_log.gateway_support import metric, metrics
from tests.support.subprocess_gateway import SubprocessGateway
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
FLUSH_INTERVAL_S = 0.05
SLACK_S = 0.5  # as in tests/request_log: one batch's encode, write and fsync, on a busy box


def write_config(root: Path, artifact: Path) -> Path:
    path = root / "gateway.toml"
    path.write_text(AUTH_CONFIG + f"""
[request_log]
flush_interval_ms = {FLUSH_INTERVAL_S * 1000}

[models.fraud]
artifact = "{artifact}"

[models.fraud.lifecycle]
min_rows = 100000   # never enough rows: no retraining run starts during the test

[[models.fraud.lifecycle.triggers]]
kind = "interval"
seconds = 3600
""")
    return path


class Admin:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)

    def __call__(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=OPERATOR, timeout=30)

    def close(self) -> None:
        self.channel.close()


def upload(model: str, data: bytes) -> Any:
    yield apb.RegisterVersionRequest(header=apb.RegisterVersionHeader(model=model))
    yield apb.RegisterVersionRequest(chunk=data)


def control_state(admin: Admin) -> dict[str, Any]:
    """The control plane as comparable values (times that move by themselves left out)."""
    model = admin("GetModel", apb.GetModelRequest(name="fraud"))
    versions = admin("ListVersions", apb.ListVersionsRequest(model="fraud")).versions
    traffic = admin("GetTrafficPolicy", apb.GetTrafficPolicyRequest(model="fraud"))
    triggers = admin("ListTriggers", apb.ListTriggersRequest(model="fraud"))
    return {
        "aliases": dict(model.aliases),
        "served": model.served_version,
        "loads": sorted((x.version, x.production, x.explicit) for x in model.loads),
        "versions": [(v.version, v.status, v.sha256, tuple(v.tags)) for v in versions],
        "policy": json_format.MessageToDict(traffic.policy),
        "serving_set": sorted(traffic.serving_set),
        "triggers": (triggers.revision, triggers.actor,
                     [(json_format.MessageToDict(t.spec), t.description)
                      for t in triggers.triggers]),
    }


def events(admin: Admin) -> list[apb.Event]:
    return list(admin("ListEvents", apb.ListEventsRequest(model="fraud", limit=10000)).events)


@dataclass
class AliasMover:
    """Moves ``staging`` between versions 2 and 3 back to back, recording each move the
    server acknowledged."""

    admin: Admin
    acked: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> AliasMover:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        version = 2
        while not self._stop.is_set():
            version = 5 - version
            try:
                self.admin("SetAlias", apb.SetAliasRequest(model="fraud", alias="staging",
                                                           version=version))
            except grpc.RpcError as exc:
                self.failures.append(exc.code().name)
                self._stop.wait(0.01)
                continue
            self.acked.append(version)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def fraud_request(request_id: str) -> pb.ModelInferRequest:
    return make_request("fraud", "features", 1, 20, request_id)


def test_kill_9_under_load_and_admin_writes_then_restart_keeps_the_control_plane(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    config = write_config(tmp_path, model_files["logreg"])
    data = tmp_path / "data"
    gw = SubprocessGateway(config, data).start()
    assert gw.process is not None
    admin = Admin(gw.admin_address)
    try:
        for seed in (7, 11):  # versions 2 and 3
            admin("RegisterVersion", upload("fraud", onnx_models.logreg_like_model(seed=seed)))
        admin("Promote", apb.PromoteRequest(model="fraud", version=2))
        admin("SetAlias", apb.SetAliasRequest(model="fraud", alias="staging", version=3))
        admin("LoadVersion", apb.LoadVersionRequest(model="fraud", version=1))
        admin("SetTrafficPolicy", apb.SetTrafficPolicyRequest(model="fraud", sticky=True, arms=[
            apb.TrafficArm(version=2, weight=0.75), apb.TrafficArm(version=3, weight=0.25)]))
        triggers = apb.SetTriggersRequest(model="fraud")
        triggers.triggers.add().update({"kind": "cron", "cron": "0 3 * * *"})
        triggers.triggers.add().update({"kind": "new_labels", "min_labels": 5000,
                                        "check_every_s": 600})
        admin("SetTriggers", triggers)
        before = control_state(admin)
        acknowledged_events = events(admin)
        assert before["aliases"] == {"production": 2, "staging": 3}
        assert before["loads"] == [(1, False, True), (2, True, False), (3, False, False)]
        assert before["triggers"][:2] == (2, "ops")

        load = ClosedLoad(gw.grpc_address, fraud_request, "k9", threads=4).start()
        mover = AliasMover(Admin(gw.admin_address)).start()
        load.wait_for(lambda o: sum(x.code == grpc.StatusCode.OK for x in o) >= 300,
                      what="300 answered requests")
        wait_until(lambda: len(mover.acked) >= 20, 30, "20 alias moves")
        # The database goes away for the last stretch: those records live only in the
        # journal when the process dies, so the restart must replay them.
        with write_locked(f"sqlite:///{data / 'gateway.db'}"):
            seen = len(load.ok())
            load.wait_for(lambda o: sum(x.code == grpc.StatusCode.OK for x in o) >= seen + 200,
                          what="200 more answered requests")
            killed_at = time.monotonic()
            os.kill(gw.process.pid, signal.SIGKILL)
            gw.process.wait(10)
        load.stop()
        mover.stop()
        mover.admin.close()
    finally:
        admin.close()
        gw.stop()
    pending = journal_backlog(data / "request-log")
    assert pending > 0, "nothing was left to replay: the scenario did not test the replay"
    early = [o for o in load.outcomes if o.code != grpc.StatusCode.OK and o.done < killed_at]
    assert not early, [(o.code.name, o.details) for o in early[:3]]

    with SubprocessGateway(config, data) as restarted:
        admin = Admin(restarted.admin_address)
        try:
            def replayed() -> bool:
                samples = metrics(restarted.ports["http"])
                return (metric(samples, "gateway_request_log_backlog_bytes") == 0 and metric(
                    samples, "gateway_request_log_replayed_total", kind="request") >= pending)

            wait_until(replayed, 60, "the journal replayed")
            after = control_state(admin)
            trail = events(admin)
            logged = list(admin.stub.QueryRequests(apb.QueryRequestsRequest(
                model="fraud", omit_payload=True), metadata=OPERATOR, timeout=60))
            served = ClosedLoad(restarted.grpc_address, fraud_request, "after", threads=2)
            served.start().wait_for(lambda o: len(o) >= 50, what="50 requests after restart")
            served.stop()
            rollback = admin("Rollback", apb.RollbackRequest(model="fraud"))
        finally:
            admin.close()

    # The control plane: exactly as left.
    staging = after["aliases"].pop("staging")
    del before["aliases"]["staging"]
    for key in ("aliases", "served", "loads", "versions", "policy", "serving_set",
                "triggers"):
        assert after[key] == before[key], key
    # The audit trail: every acknowledged event kept. The moves of ``staging`` since: every
    # acknowledged one in order, at most one more (committed, its answer lost in the
    # kill), and the alias where the last of them put it.
    assert {e.id for e in acknowledged_events} <= {e.id for e in trail}
    moves = [e.version for e in reversed(trail) if e.action == "alias.set"
             and e.detail.fields["alias"].string_value == "staging"
             and e.id > max(x.id for x in acknowledged_events)]
    assert moves[:len(mover.acked)] == mover.acked
    assert len(moves) - len(mover.acked) in (0, 1)
    assert moves[-1] == staging
    # The rollback history survived: production goes back to version 1.
    assert (rollback.previous_version, rollback.version) == (2, 1)
    # Serving follows the restored policy.
    assert all(o.code == grpc.StatusCode.OK for o in served.outcomes)
    assert {o.version for o in served.outcomes} <= {"2", "3"}

    # The request log: replayed, nothing twice, nothing answered well before the kill lost.
    record_ids = [r.record_id for r in logged]
    request_ids = [r.request_id for r in logged]
    assert len(record_ids) == len(set(record_ids)), "a record was inserted twice"
    assert len(request_ids) == len(set(request_ids)), "a request was logged twice"
    answered = {o.request_id: o.done for o in load.ok()}
    lost = [rid for rid, done in answered.items() if rid not in set(request_ids)
            and done < killed_at - FLUSH_INTERVAL_S - SLACK_S]
    assert not lost, f"{len(lost)} requests answered long before the kill are not logged"
    print(f"kill -9: {len(answered)} answered, {pending} journal records replayed, "
          f"{len(mover.acked)} alias moves acknowledged, staging={staging}")
