"""``gateway feedback`` and ``gateway requests …`` as subprocesses against ``gateway serve``:
labels in, the training set out (csv and npz, byte-exact features), list, unmatched, purge."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.cli.main import main
from tests.admin.cli_support import failed, gateway_cli, ok
from tests.conftest import write_config
from tests.request_log.gateway_support import AUTH_CONFIG, TOKEN, Clients, features
from tests.support.subprocess_gateway import SubprocessGateway
from tests.support.waiting import wait_until

N = 12
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           model_files: dict[str, Path]) -> Iterator[SubprocessGateway]:
    root = tmp_path_factory.mktemp("requests-cli")
    config = write_config(root / "gateway.toml", {"fraud": model_files["logreg"],
                                                  "other": model_files["logreg"]},
                          AUTH_CONFIG + "[request_log]\nflush_interval_ms = 20\n"
                          "join_window_hours = 0.0002\n")
    with SubprocessGateway(config, root / "data") as gw:
        yield gw


@pytest.fixture(scope="module")
def clients(served: SubprocessGateway) -> Iterator[Clients]:
    c = Clients(served.grpc_address, served.admin_address)
    yield c
    c.close()


def cli(served: SubprocessGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return gateway_cli(served.admin_address, *args, token=TOKEN)


def send_feedback(served: SubprocessGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(served, "feedback", "--inference-target", served.grpc_address, *args)


def logged(served: SubprocessGateway, model: str, *flags: str) -> list[dict[str, object]]:
    return json.loads(ok(cli(served, "requests", "list", model, "--json", "--limit", "1000",
                             *flags)))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def labelled(served: SubprocessGateway, clients: Clients,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """N inferences of ``fraud``, labelled from the CLI: one alone, the rest from a file."""
    sent = {f"cli-{i}": features(i) for i in range(N)}
    for request_id, x in sent.items():
        clients.infer("fraud", request_id, x)
    out = ok(send_feedback(served, "fraud", "cli-0", "1"))
    assert out.startswith("accepted: fraud cli-0 (feedback ")
    path = tmp_path_factory.mktemp("labels") / "labels.csv"
    rows = ["request_id,label,time"] + [
        f"cli-{i},{i % 2},2026-05-10T12:00:{i:02d}Z" for i in range(1, N)]
    path.write_text("\n".join(rows) + "\n")
    out = ok(send_feedback(served, "fraud", "--file", str(path)))
    assert out.strip() == f"accepted {N - 1} of {N - 1} labels for fraud"
    wait_until(lambda: len(logged(served, "fraud", "--labelled")) == N, timeout=30)
    return sent


def test_help_for_every_new_command(capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert "\n    requests " in result.stdout and "\n    feedback " in result.stdout
    for path in (["requests"], ["requests", "list"], ["requests", "export"],
                 ["requests", "unmatched"], ["requests", "purge"], ["feedback"]):
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: gateway {' '.join(path)} "), out
    with pytest.raises(SystemExit):
        main(["feedback", "--help"])
    assert "--inference-target" in capsys.readouterr().out


def test_feedback_labels_join_and_list_shows_them(
        served: SubprocessGateway, labelled: dict[str, np.ndarray]) -> None:
    records = {r["request_id"]: r for r in logged(served, "fraud")}
    assert set(records) == set(labelled)
    assert records["cli-0"]["feedback"]["label"] == {"class_label": 1}  # type: ignore[index]
    assert records["cli-3"]["feedback"]["event_time"] == "2026-05-10T12:00:03Z"  # type: ignore[index]
    table = ok(cli(served, "requests", "list", "fraud", "--labelled"))
    assert table.splitlines()[0].split() == ["TIME", "VERSION", "STATUS", "LATENCY_US",
                                             "REQUEST_ID", "LABEL", "RECORD"]
    assert len(table.splitlines()) == N + 1


def test_export_csv_to_stdout_is_the_training_set(
        served: SubprocessGateway, labelled: dict[str, np.ndarray]) -> None:
    out = ok(cli(served, "requests", "export", "fraud"))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["request_id"] for r in rows) == sorted(labelled)
    for row in rows:
        x = labelled[row["request_id"]][0]
        features = np.array([row[f"f{i}"] for i in range(20)], dtype=np.float32)
        assert features.tobytes() == x.tobytes()
        assert int(row["label"]) == (1 if row["request_id"] == "cli-0"
                                     else int(row["request_id"][4:]) % 2)
        assert row["version"] == "1"


def test_export_npz_round_trips_byte_exact(
        served: SubprocessGateway, labelled: dict[str, np.ndarray], tmp_path: Path) -> None:
    target = tmp_path / "train.npz"
    out = ok(cli(served, "requests", "export", "fraud", "--output", str(target)))
    assert out.strip() == f"wrote {target}: {N} rows of fraud"
    with np.load(target) as data:
        ids = data["request_ids"].tolist()
        assert sorted(ids) == sorted(labelled)
        for row, request_id in enumerate(ids):
            assert data["features"][row].tobytes() == labelled[request_id][0].tobytes()
        assert data["labels"].dtype == np.int64 and data["versions"].tolist() == [1] * N
        assert str(data["model"]) == "fraud" and str(data["input_name"]) == "features"
    # npz on standard output, and the filters: nothing before a time in the future.
    binary = subprocess.run(
        [sys.executable, "-m", "gateway", "requests", "export", "fraud", "--format", "npz",
         "--target", served.admin_address, "--token", TOKEN, "--version", "1"],
        capture_output=True, timeout=60)
    assert binary.returncode == 0, binary.stderr
    with np.load(io.BytesIO(binary.stdout)) as data:
        assert sorted(data["request_ids"].tolist()) == sorted(labelled)
    empty = ok(cli(served, "requests", "export", "fraud", "--since", "2999-01-01"))
    assert empty.splitlines()[0].startswith("record_id,request_id,version,timestamp_us")
    assert len(empty.splitlines()) == 1


def test_feedback_errors_exit_1_naming_the_line(
        served: SubprocessGateway, clients: Clients, tmp_path: Path) -> None:
    assert "model 'nope' not found" in failed(send_feedback(served, "nope", "r1", "1"))
    assert "LABEL: expected an integer class" in failed(send_feedback(served, "fraud", "r1",
                                                                      "yes"))
    bad = tmp_path / "bad.csv"
    bad.write_text("r1,1\nr2,oops\n")
    assert f"{bad}:2: expected an integer class" in failed(
        send_feedback(served, "fraud", "--file", str(bad)))
    rejected = tmp_path / "rejected.csv"
    rejected.write_text("# empty request ids are refused by the server\nok-1,1\n,0\n")
    result = send_feedback(served, "fraud", "--file", str(rejected))
    assert result.returncode == 1
    assert result.stdout.strip() == "accepted 1 of 2 labels for fraud"
    assert f"{rejected}:3: : INVALID_ARGUMENT: request_id" in result.stderr
    # A tensor label, given as a JSON array.
    clients.infer("other", "tensor-label", features(1, rows=2))
    ok(send_feedback(served, "other", "tensor-label", "[0.5, 1.5]", "--datatype", "FP32"))
    wait_until(lambda: len(logged(served, "other", "--labelled")) == 1, timeout=30)
    (record,) = logged(served, "other", "--labelled")
    tensor = record["feedback"]["label"]["tensor"]  # type: ignore[index]
    assert (tensor["datatype"], tensor["shape"]) == ("FP32", [2])


def test_unmatched_and_purge(served: SubprocessGateway, clients: Clients) -> None:
    clients.infer("other", "kept", features(2))
    ok(send_feedback(served, "other", "never-served", "1"))
    wait_until(lambda: "never-served" in ok(cli(served, "requests", "unmatched", "other")),
               timeout=30)
    out = ok(cli(served, "requests", "purge", "other", "--older-than-days", "1"))
    assert out.startswith("purged other before ")
    assert out.rstrip().endswith("0 requests, 0 feedback, 1 unmatched feedback")
    assert "never-served" not in ok(cli(served, "requests", "unmatched", "other"))
    assert "kept" in {r["request_id"] for r in logged(served, "other")}
    # --before now: everything logged so far goes; the audit trail says who and how much.
    result = json.loads(ok(cli(served, "requests", "purge", "other", "--before", "now",
                               "--json")))
    assert result["requests"] >= 2
    assert logged(served, "other") == []
    events = json.loads(ok(cli(served, "events", "--model", "other", "--action",
                               "requests.purge", "--json")))
    assert len(events) == 2 and events[0]["actor"] == "ops"
    assert "UNAUTHENTICATED" in failed(gateway_cli(served.admin_address, "requests", "purge",
                                                   "other", token=None))
    # No cutoff: the model's retention (30 days by default) keeps today's records.
    clients.infer("other", "recent", features(3))
    wait_until(lambda: len(logged(served, "other")) == 1, timeout=30)
    assert ok(cli(served, "requests", "purge", "other")).rstrip().endswith(
        "0 requests, 0 feedback, 0 unmatched feedback")
