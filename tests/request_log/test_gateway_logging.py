"""The request log wired into a real in-process gateway: every inference is a row with
byte-exact tensors, failures carry their status, a database outage loses and duplicates
nothing, a stalled sink drops (counted) instead of growing memory or slowing serving, and
feedback joins through the FeedbackService."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.pb import feedback_pb2 as fpb
from gateway.rpc.request_log_converters import from_logged_request
from lifecycle.request_export import training_set_from
from loadtests.database_lock import write_locked
from tests.conftest import write_config
from tests.request_log.gateway_support import (
    AUTH_CONFIG,
    Clients,
    assert_an_outage_loses_nothing,
    by_request_id,
    features,
    flushed,
    infer_request,
    metric,
    metrics,
)
from tests.support.inprocess import InProcessGateway
from tests.support.waiting import wait_until

MODELS = ("exact", "outage", "joins", "policy_off", "sampled", "small")
JOIN_WINDOW_S = 1.0


def start_gateway(root: Path, logreg: Path, extra: str, models: tuple[str, ...] = MODELS,
                  ) -> InProcessGateway:
    config = write_config(root / "gateway.toml", dict.fromkeys(models, logreg),
                          AUTH_CONFIG + extra)
    return InProcessGateway.start_from(config, root / "data")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            model_files: dict[str, Path]) -> Iterator[InProcessGateway]:
    root = tmp_path_factory.mktemp("logging")
    extra = f"""
[request_log]
metadata_keys = ["x-client-id", "x-tenant"]
flush_interval_ms = 20
join_window_hours = {JOIN_WINDOW_S / 3600}
[models.policy_off.logging]
capture_payload = false
[models.sampled.logging]
sample_rate = 0
[models.small.logging]
max_payload_bytes = 250
"""
    server = start_gateway(root, model_files["logreg"], extra)
    yield server
    server.stop()


@pytest.fixture
def clients(gateway: InProcessGateway) -> Iterator[Clients]:
    c = Clients(gateway.grpc_address, gateway.admin_address)
    yield c
    c.close()


def test_n_requests_are_n_rows_with_byte_exact_tensors(
        gateway: InProcessGateway, clients: Clients) -> None:
    n = 60
    sent, answers = {}, {}
    for i in range(n):
        x = features(i, rows=1 + i % 3)
        answers[f"exact-{i}"] = clients.infer("exact", f"exact-{i}", x, metadata=(
            ("x-client-id", f"client-{i % 4}"), ("x-secret", "never logged")))
        sent[f"exact-{i}"] = x
    # Requests without an id get the gateway's; it is the one logged (and in the response).
    anonymous = clients.infer("exact", "", features(999))
    flushed(gateway)

    records = clients.query("exact")
    assert len(records) == n + 1
    assert len({r.record_id for r in records}) == n + 1
    found = by_request_id(records)
    assert [r.status for r in found[anonymous.id]] == ["OK"]
    for request_id, x in sent.items():
        (record,) = found[request_id]
        response = answers[request_id]
        assert record.version == 1 and record.status == "OK" and record.latency_us > 0
        assert record.payload_captured and not record.payload_dropped and not record.shadow
        assert dict(record.metadata) == {"x-client-id": f"client-{int(request_id[6:]) % 4}"}
        (tensor,) = record.inputs
        assert (tensor.name, tensor.datatype, list(tensor.shape)) == (
            "features", "FP32", list(x.shape))
        assert tensor.data == x.tobytes()  # NaN payloads and -0.0 included
        assert [(o.name, o.datatype, list(o.shape)) for o in record.outputs] == [
            (o.name, o.datatype, list(o.shape)) for o in response.outputs]
        assert [o.data for o in record.outputs] == list(response.raw_output_contents)
        # No experiment routed it (the routing fields are the routing's to fill).
        assert record.experiment_id == "" and not record.shadow

    # Label every one (a class for one row, a tensor of classes for a batch): the export,
    # the training set, has every id.
    def label(rid: str) -> fpb.Feedback:
        rows = sent[rid].shape[0]
        classes = np.full(rows, int(rid[6:]) % 2, dtype=np.int64)
        if rows == 1:
            return fpb.Feedback(model="exact", request_id=rid, class_label=int(classes[0]))
        return fpb.Feedback(model="exact", request_id=rid, tensor=fpb.Tensor(
            datatype="INT64", shape=[rows], raw_contents=classes.tobytes()))

    summary = clients.feedback.StreamFeedback((label(rid) for rid in sent), timeout=30)
    assert (summary.accepted, summary.rejected) == (n, 0)
    flushed(gateway)
    labelled = clients.query("exact", has_feedback=True, exclude_shadow=True)
    dataset = training_set_from("exact", (from_logged_request(r) for r in labelled))
    assert dataset.skipped == 0
    assert set(dataset.request_ids) == set(sent)
    assert len(dataset) == sum(x.shape[0] for x in sent.values())
    first = np.flatnonzero(dataset.request_ids == "exact-5")
    np.testing.assert_array_equal(dataset.features[first], sent["exact-5"])
    assert set(dataset.labels[first].tolist()) == {1}


def test_failures_that_reached_a_version_are_logged_with_their_status(
        gateway: InProcessGateway, clients: Clients) -> None:
    bad = np.zeros((1, 3), dtype=np.float32)
    with pytest.raises(grpc.RpcError) as info:
        clients.infer("exact", "wrong-shape", bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        clients.infer("no-such-model", "unknown-model", features(1))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    flushed(gateway)
    found = by_request_id(clients.query("exact"))
    (record,) = found["wrong-shape"]
    assert (record.status, record.version, list(record.outputs)) == ("INVALID_ARGUMENT", 1, [])
    assert record.inputs[0].data == bad.tobytes()
    assert "unknown-model" not in found


def test_streamed_inferences_are_logged_too(gateway: InProcessGateway,
                                            clients: Clients) -> None:
    requests = [infer_request("exact", "stream-0", features(0)),
                infer_request("exact", "stream-1", np.zeros((1, 2), np.float32)),
                infer_request("exact", "stream-2", features(2))]
    replies = list(clients.inference.ModelStreamInfer(
        iter(requests), metadata=(("x-tenant", "t1"),), timeout=30))
    assert [bool(r.error_message) for r in replies] == [False, True, False]
    flushed(gateway)
    found = by_request_id(clients.query("exact"))
    assert [found[f"stream-{i}"][0].status for i in range(3)] == [
        "OK", "INVALID_ARGUMENT", "OK"]
    assert all(dict(found[f"stream-{i}"][0].metadata) == {"x-tenant": "t1"} for i in range(3))


@pytest.mark.slow  # the database's busy timeout (5 s) must run out
def test_database_outage_mid_load_fails_nothing_and_loses_or_duplicates_nothing(
        gateway: InProcessGateway, clients: Clients) -> None:
    # Journal-only meanwhile: batches pile up behind the insert, which fails once the
    # database's busy timeout (5 s) runs out, and spill.
    db_path = gateway.settings.data_dir / "gateway.db"
    assert_an_outage_loses_nothing(gateway, clients, "outage",
                                   write_locked(f"sqlite:///{db_path}"))


def test_feedback_joins_before_and_after_duplicates_and_reused_ids(
        gateway: InProcessGateway, clients: Clients) -> None:
    # Before its request: stored, joined once the request is logged.
    clients.label("joins", "early", class_label=1)
    clients.infer("joins", "early", features(1))
    # After.
    clients.infer("joins", "late", features(2))
    clients.label("joins", "late", value=0.25)
    # Duplicates: the latest received wins, all are counted.
    clients.label("joins", "late", value=0.75)
    # A reused request id: each inference is a record; the label joins the latest one.
    clients.infer("joins", "reused", features(3))
    clients.infer("joins", "reused", features(4))
    tensor = fpb.Tensor(name="y", datatype="FP32", shape=[1, 2],
                        raw_contents=np.array([[0.5, -1.0]], np.float32).tobytes())
    clients.label("joins", "reused", tensor=tensor)
    flushed(gateway)

    found = by_request_id(clients.query("joins"))
    (early,) = found["early"]
    assert early.feedback.label.class_label == 1 and early.feedback.count == 1
    (late,) = found["late"]
    assert late.feedback.label.value == 0.75 and late.feedback.count == 2
    older, newer = found["reused"]
    assert not older.HasField("feedback")
    assert newer.feedback.label.tensor.data == tensor.raw_contents
    assert newer.inputs[0].data == features(4).tobytes()
    assert {r.request_id for r in clients.query("joins", has_feedback=False)} == {"reused"}


def test_feedback_errors_and_stream_rejections(
        gateway: InProcessGateway, clients: Clients) -> None:
    cases = [
        (fpb.Feedback(model="nope", request_id="r", class_label=1), grpc.StatusCode.NOT_FOUND),
        (fpb.Feedback(model="joins", request_id="", class_label=1),
         grpc.StatusCode.INVALID_ARGUMENT),
        (fpb.Feedback(model="joins", request_id="r"), grpc.StatusCode.INVALID_ARGUMENT),
        (fpb.Feedback(model="joins", request_id="r", tensor=fpb.Tensor(
            datatype="FP32", shape=[2], raw_contents=b"\0" * 4)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (fpb.Feedback(model="joins", request_id="r", tensor=fpb.Tensor(
            datatype="FP8", shape=[1], raw_contents=b"\0")), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for message, code in cases:
        with pytest.raises(grpc.RpcError) as info:
            clients.feedback.SubmitFeedback(message, timeout=30)
        assert info.value.code() == code, message
    summary = clients.feedback.StreamFeedback(
        iter([message for message, _ in cases] + [cases[0][0]]), timeout=30)
    assert (summary.accepted, summary.rejected) == (0, len(cases) + 1)
    assert [(r.index, r.code) for r in summary.rejections][:3] == [
        (0, "NOT_FOUND"), (1, "INVALID_ARGUMENT"), (2, "INVALID_ARGUMENT")]
    assert "raw contents have 4 bytes, expected 8" in summary.rejections[3].message


def test_unmatched_feedback_expires_and_is_purged(
        gateway: InProcessGateway, clients: Clients) -> None:
    clients.infer("joins", "served", features(5))
    clients.label("joins", "served", class_label=0)
    clients.label("joins", "never-served", class_label=1)
    flushed(gateway)
    wait_until(lambda: [f.request_id for f in clients.unmatched("joins")] == ["never-served"],
               timeout=JOIN_WINDOW_S * 20)
    # A cutoff before everything: only the unmatched feedback goes.
    result = clients.purge("joins", older_than_days=365)
    assert (result.requests, result.unmatched_feedback) == (0, 1)
    assert clients.unmatched("joins") == []
    assert by_request_id(clients.query("joins"))["served"][0].feedback.label.class_label == 0


def test_logging_policy_per_model(gateway: InProcessGateway, clients: Clients) -> None:
    registry = gateway.app.metrics.registry
    sampled_before = registry.get_sample_value("gateway_request_log_sampled_out_total") or 0
    for i in range(5):
        clients.infer("policy_off", f"off-{i}", features(i))
        clients.infer("sampled", f"sampled-{i}", features(i))
        clients.infer("small", f"small-{i}", features(i, rows=1 + i % 2))
    flushed(gateway)
    off = clients.query("policy_off")
    assert len(off) == 5 and all(not r.payload_captured and not r.inputs for r in off)
    assert all(not r.payload_dropped for r in off)
    assert clients.query("sampled") == []
    assert registry.get_sample_value("gateway_request_log_sampled_out_total") == (
        sampled_before + 5)
    # The limit is on the encoded tensors: one row is 204 bytes, two rows 300.
    small = {r.request_id: r for r in clients.query("small")}
    assert small["small-0"].payload_captured and not small["small-0"].payload_dropped
    assert small["small-1"].payload_dropped and not small["small-1"].inputs


def test_health_and_reflection_list_the_feedback_service(gateway: InProcessGateway) -> None:
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(
            service="gateway.feedback.v1.FeedbackService"), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "gateway.feedback.v1.FeedbackService" in names


def test_stalled_sink_with_a_tiny_queue_drops_counted_memory_bounded_serving_unaffected(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    queue_max, budget = 8, 16 * 1024
    server = start_gateway(tmp_path, model_files["logreg"], f"""
[request_log]
queue_max = {queue_max}
batch_max = 4
flush_interval_ms = 10
journal_budget_mb = {budget / (1 << 20)}
""", models=("stalled",))
    c = Clients(server.grpc_address, server.admin_address)
    request_log = server.app.request_log
    assert request_log is not None
    n = 400
    latencies = []
    try:
        with write_locked(f"sqlite:///{server.settings.data_dir / 'gateway.db'}"):
            for i in range(n):
                started = time.monotonic()
                c.infer("stalled", f"stalled-{i}", features(i))
                latencies.append(time.monotonic() - started)
                assert request_log.queue_depth <= queue_max
                assert request_log.journal_bytes <= budget
            samples = metrics(server.http_port)
        assert metric(samples, "gateway_request_log_dropped_total", kind="request",
                      reason="journal_full") > 0
        dropped = sum(v for (name, labels), v in samples.items()
                      if name == "gateway_request_log_dropped_total"
                      and ("kind", "request") in labels)
        assert metric(samples, "gateway_request_log_queue_depth") <= queue_max
        assert metric(samples, "gateway_request_log_journal_bytes") <= budget
        # Serving did not wait for the stalled sink.
        assert sorted(latencies)[int(n * 0.99)] < 0.5
        assert request_log.flush(60)
        stored = c.query("stalled", omit_payload=True)
        assert len(stored) == len({r.record_id for r in stored})
        # Every record is stored or counted as dropped: none vanished silently.
        assert len(stored) + dropped == n
    finally:
        c.close()
        server.stop()


def test_disabled_request_log_refuses_feedback_and_logs_nothing(
        tmp_path: Path, model_files: dict[str, Path]) -> None:
    server = start_gateway(tmp_path, model_files["logreg"], "[request_log]\nenabled = false\n",
                           models=("quiet",))
    c = Clients(server.grpc_address, server.admin_address)
    try:
        assert server.app.request_log is None
        c.infer("quiet", "q1", features(1))
        with pytest.raises(grpc.RpcError) as info:
            c.label("quiet", "q1", class_label=1)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "disabled" in (info.value.details() or "")
        assert c.query("quiet") == []
        with grpc.insecure_channel(server.grpc_address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(
                service="gateway.feedback.v1.FeedbackService"), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not (server.settings.data_dir / "request-log").exists()
    finally:
        c.close()
        server.stop()
