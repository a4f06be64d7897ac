"""``python -m loadtests`` end to end against the in-process V2 double."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from loadtests.cli import main
from loadtests.scenarios import builtin_registry
from tests.loadtests.v2double import Behaviour

QUICK = ["--warmup", "0", "--duration", "0.4", "--no-progress", "--model", "m"]


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_help_at_every_level() -> None:
    for argv in [["--help"], *[[name, "--help"] for name in builtin_registry().names()]]:
        with pytest.raises(SystemExit) as exc:
            main(argv, stdout=io.StringIO(), stderr=io.StringIO())
        assert exc.value.code == 0


def test_module_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert all(name in proc.stdout for name in ("steady", "sweep", "overload", "compare"))


def test_steady_writes_json_and_plot_with_discovered_inputs(v2_server, tmp_path) -> None:
    server = v2_server(Behaviour(version=lambda n: "3"))
    out = tmp_path / "r.json"
    code, stdout, _ = _main(
        [
            "steady",
            "--target",
            server.address,
            *QUICK,
            "--concurrency",
            "2",
            "--param",
            "tier=gold",
            "--header",
            "x-tenant=t1",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    assert "version 3" in stdout
    doc = json.loads(out.read_text())
    assert doc["schema"] == "loadtests.result/1" and doc["scenario"] == "steady"
    assert doc["workload"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]
    assert doc["workload"]["inputs_discovered"] is True
    run = doc["runs"][0]
    assert run["requests"]["ok"] == server.received.count > 0
    assert set(run["versions"]) == {"3"}
    assert run["windows"] and run["latency_us"]["p99"] > 0
    assert server.received.last_parameters == {"tier": "gold"}
    assert server.received.last_metadata["x-tenant"] == "t1"
    assert (tmp_path / "r.png").stat().st_size > 10_000
    assert doc["plots"] == [str(tmp_path / "r.png")]


def test_steady_runs_a_command_at_a_time_and_marks_it(v2_server, tmp_path) -> None:
    server = v2_server()
    out = tmp_path / "r.json"
    marker = tmp_path / "ran"
    code, _, _ = _main(
        [
            "steady",
            "--target",
            server.address,
            *QUICK,
            "--input",
            "x:FP32:1,4",
            "--run-at",
            f"0.1:{sys.executable} -c \"open('{marker}', 'w')\"",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    assert marker.exists()
    doc = json.loads(out.read_text())
    labels = [e["label"] for e in doc["events"]]
    assert len(labels) == 2 and labels[1].endswith("done rc=0")
    assert 0.05 <= doc["events"][0]["t_s"] < 0.4


def test_remote_target_is_refused() -> None:
    code, _, err = _main(["steady", "--target", "10.1.2.3:8001", *QUICK])
    assert code == 2
    assert "--allow-remote" in err


def test_unknown_model_is_a_clean_error(v2_server) -> None:
    server = v2_server()
    code, _, err = _main(["steady", "--target", server.address, *QUICK[:-1], "nope"])
    assert code == 2 and "NOT_FOUND" in err


def test_sweep_gives_one_point_per_level_and_one_plot(v2_server, tmp_path) -> None:
    server = v2_server(Behaviour(delay_s=0.002))
    out = tmp_path / "s.json"
    code, stdout, _ = _main(
        [
            "sweep",
            "--target",
            server.address,
            *QUICK,
            "--duration",
            "0.3",
            "--levels",
            "1,4",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    points = doc["summary"]["points"]
    assert [p["concurrency"] for p in points] == [1, 4]
    assert points[1]["throughput_rps"] > points[0]["throughput_rps"]
    assert (tmp_path / "s.png").exists() and "peak" in stdout


def test_overload_reports_shedding_timeouts_and_admitted_latency(v2_server, tmp_path) -> None:
    server = v2_server(Behaviour(delay_s=0.01, shed_above=4))
    out = tmp_path / "o.json"
    code, _, _ = _main(
        [
            "overload",
            "--target",
            server.address,
            *QUICK,
            "--duration",
            "0.5",
            "--capacity-duration",
            "0.3",
            "--timeout",
            "0.5",
            # 3 x, not the default 1.5 x: on a busy machine the client measures less than
            # the double's capacity, and 1.5 x of that may not fill its 4 slots.
            "--factor",
            "3",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    summary = doc["summary"]
    assert [r["label"] for r in doc["runs"]][0] == "capacity"
    assert summary["capacity_rps"] > 0
    assert summary["offered_rps"] == pytest.approx(3 * summary["capacity_rps"])
    assert summary["shed"] > 0 and summary["shed_latency_us"]["p50"] is not None
    assert summary["admitted_p99_within_timeout"] is True
    assert summary["deadline_exceeded"] == 0


def test_overload_at_a_given_rate_counts_deadline_exceeded(v2_server, tmp_path) -> None:
    server = v2_server(Behaviour(delay_s=0.2))
    out = tmp_path / "o.json"
    code, _, _ = _main(
        [
            "overload",
            "--target",
            server.address,
            *QUICK,
            "--rate",
            "50",
            "--timeout",
            "0.05",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["capacity_rps"] is None
    assert summary["deadline_exceeded"] == 20


def test_compare_runs_each_target_with_ratios_to_the_first(v2_server, tmp_path) -> None:
    fast, slow = v2_server(Behaviour(delay_s=0.002)), v2_server(Behaviour(delay_s=0.008))
    out = tmp_path / "c.json"
    code, stdout, _ = _main(
        [
            "compare",
            "--target",
            fast.address,
            "--target",
            slow.address,
            *QUICK,
            "--concurrency",
            "2",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    rows = json.loads(out.read_text())["summary"]["targets"]
    assert [r["target"] for r in rows] == [fast.address, slow.address]
    assert rows[0]["throughput_ratio"] == 1.0
    assert rows[1]["throughput_ratio"] < 0.7
    assert rows[1]["p50_ratio"] > 1.5
    assert "x ok/s" in stdout


def test_a_failed_check_exits_1_and_a_passed_one_0(v2_server) -> None:
    """Scenarios with a verdict (``summary.passed``) fail the command when it is false."""
    server = v2_server(Behaviour(version=lambda n: "3"))
    base = ["ab", "--target", server.address, *QUICK, "--concurrency", "2"]
    code, _, stderr = _main([*base, "--expect", "3=100"])
    assert code == 0, stderr
    code, _, stderr = _main([*base, "--expect", "3=50", "--expect", "4=50"])
    assert code == 1
    assert "loadtests: ab: its check failed" in stderr
