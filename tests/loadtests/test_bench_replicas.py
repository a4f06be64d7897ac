"""``python -m loadtests.bench_replicas``: end to end in its shortest form on the test
PostgreSQL (two real gateways, the harness's client processes, real promotions through
the ``gateway`` CLI), and its write-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import bench_replicas
from loadtests.bench_replicas_report import BEGIN, END, splice
from tests.support.databases import PostgresServer


@pytest.mark.slow
@pytest.mark.postgres
def test_two_replicas_serve_load_and_follow_a_promotion(postgres_server: PostgresServer,
                                                        tmp_path: Path) -> None:
    url, name = postgres_server.create_database()
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nOther sections stay.\n")
    work = tmp_path / "work"
    try:
        status = bench_replicas.main([
            "--quick", "--duration", "1.5", "--database-url", url, "--docs", str(docs),
            "--work-dir", str(work), "--anchors-dir", str(tmp_path / "no-anchors")])
    finally:
        postgres_server.drop_database(name)
    assert status == 0
    result = json.loads((work / "replicas.json").read_text())

    one, two = result["throughput"]
    assert one["replicas"] == ["replica-a"]
    assert two["replicas"] == ["replica-a", "replica-b"]
    for row in (one, two):
        assert row["infer_per_s"] > 0 and row["ok"] > 0
        assert row["errors"] == {}
        assert 0 < row["p50_us"] <= row["p99_us"]
    # The client's connections went to both ports: both gateways worked.
    assert all(cores > 0 for cores in two["server_cores"].values())
    assert result["ratio"] == pytest.approx(two["infer_per_s"] / one["infer_per_s"], rel=1e-2)

    [propagation] = result["propagation"]
    assert propagation["policy_sync_s"] == 0.5
    reps = propagation["reps"]
    assert [(r["from"], r["to"]) for r in reps] == [("1", "2"), ("2", "1")]
    for rep in reps:
        # Both replicas were seen answering from the promoted version, replica-b within
        # its poll period plus a load (bound generous for a shared machine).
        assert set(rep["after_s"]) == {"replica-a", "replica-b"}
        assert rep["failed_polls"] == 0
        assert 0 <= rep["after_s"]["replica-a"] < 5
        assert 0 <= rep["after_s"]["replica-b"] < 0.5 + 20
    assert set(propagation["summary"]) == {"replica-a", "replica-b"}

    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nOther sections stay.\n\n")
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert "python -m loadtests.bench_replicas --quick --duration 1.5 --database-url URL" \
        in section
    assert url not in text  # the password stays out of the docs
    assert "| one replica |" in section and "| 0.5 | replica-b |" in section


def test_splice_replaces_only_its_own_section() -> None:
    first = splice("# Benchmarks\n\nbefore\n", "## Replicas\n\nold figures\n")
    assert first == f"# Benchmarks\n\nbefore\n\n{BEGIN}\n## Replicas\n\nold figures\n{END}\n"
    again = splice(first + "\nafter\n", "## Replicas\n\nnew figures")
    assert again == (f"# Benchmarks\n\nbefore\n\n{BEGIN}\n## Replicas\n\nnew figures\n{END}\n"
                     "\nafter\n")


def test_command_line_hides_the_database_url() -> None:
    shown = bench_replicas.command_line(
        ["--database-url", "postgresql://u:secret@h/db", "--reps", "3",
         "--database-url=postgresql://u:secret@h/db", "--under-pg-test"])
    assert shown == ("python -m loadtests.bench_replicas --database-url URL --reps 3 "
                     "--database-url=URL")
