"""``python -m loadtests logging --database-url``: in its shortest form against the test
PostgreSQL (real ``gateway serve`` processes logging into a database of the sitting's own,
the harness's client, the table locked for the outage round), and the verdict's rules."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from loadtests import cli
from loadtests.scenarios.logging import kept_up, writer_figures
from tests import onnx_models
from tests.support.databases import PostgresServer


@pytest.mark.slow
@pytest.mark.postgres
def test_logging_into_postgresql_reports_whether_the_writer_kept_up(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    artifact = tmp_path / "logreg.onnx"
    artifact.write_bytes(onnx_models.logreg_like_model())
    url = postgres_server.url.render_as_string(hide_password=False)
    out, err = io.StringIO(), io.StringIO()
    status = cli.main([
        "logging", "--artifact", str(artifact), "--database-url", url, "--rounds", "1",
        "--duration", "1", "--warmup", "0.3", "--concurrency", "2", "--pool-size", "16",
        "--metrics-interval", "0.2", "--drain-window", "10", "--drain-timeout", "60",
        "--work-dir", str(tmp_path / "work"), "--output", str(tmp_path / "logging.json"),
        "--no-progress"], stdout=out, stderr=err)
    assert status == 0, err.getvalue()

    doc = json.loads((tmp_path / "logging.json").read_text())
    assert url not in json.dumps(doc)  # the password stays out of the results
    assert doc["command"][doc["command"].index("--database-url") + 1] == "URL"
    summary = doc["summary"]
    assert summary["database"].startswith("postgresql ")
    off, on, down = summary["rounds"]
    assert [r["mode"] for r in (off, on, down)] == ["off", "on", "on, database locked"]
    assert "kept_up" not in off and off["postgres_cores"] is not None

    # Logging on: every answered request is a row, nothing spilled, the writer kept pace.
    [on_run] = [r for r in doc["runs"] if r["label"] == "on"]
    assert on["answered"] >= on_run["requests"]["ok"] > 0
    assert on["rows"] == on["answered"]
    assert on["spilled_load"] == 0 and on["dropped_load"] == 0
    assert on["drain_s"] is not None and 0 <= on["drain_s"] <= 10
    assert on["writer_rows_per_s"] > 0 and on["writer_peak_rows_per_s"] >= on["writer_rows_per_s"]
    assert on["answered_per_s"] > 0
    assert on["queue_max"] >= 0 and on["backlog_max_bytes"] >= 0
    assert on["kept_up"] is True
    assert summary["modes"]["on"]["kept_up"] is True

    # The table locked: the records waited in the journal, and all landed once released.
    assert down["spilled_load"] > 0
    assert down["rows"] == down["answered"] > 0
    assert down["replayed"] > 0 and down["dropped"] == 0
    assert down["kept_up"] is None

    table = out.getvalue()
    assert "kept up" in table and "drain s" in table
    assert re.search(r"\b2\s+on\s+postgresql .*\byes\s*$", table, re.MULTILINE)

    # The sitting's database is gone.
    [name] = re.findall(r"database (bench_logging_\w+)", err.getvalue())
    with postgres_server.admin.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM pg_database WHERE datname = :name"),
                            {"name": name}).scalar_one()
    assert left == 0


def test_a_database_url_that_is_not_postgresql_is_refused(tmp_path: Path) -> None:
    artifact = tmp_path / "logreg.onnx"
    artifact.write_bytes(onnx_models.logreg_like_model())
    err = io.StringIO()
    status = cli.main(["logging", "--artifact", str(artifact), "--database-url",
                       f"sqlite:///{tmp_path / 'x.db'}", "--no-progress"],
                      stdout=io.StringIO(), stderr=err)
    assert status == 2
    assert "--database-url: expected a postgresql URL" in err.getvalue()


def sample(t_s: float, written: float, *, spilled: float = 0, dropped: float = 0,
           queue: float = 0, backlog: float = 0, answered: float = 0) -> dict[str, float]:
    return {"t_s": t_s, "logged": written, "replayed": 0.0, "spilled": spilled,
            "dropped": dropped, "queue_depth": queue, "backlog_bytes": backlog,
            "queue_bytes": 0.0, "answered": answered}


def test_writer_figures_come_from_the_metric_samples() -> None:
    figures = writer_figures([
        sample(0.0, 0, answered=0),
        sample(0.5, 1_000, queue=40, backlog=4096, answered=1_100),
        sample(1.0, 3_000, queue=10, spilled=5, answered=3_050),
        sample(2.0, 4_000, spilled=5, answered=4_000),
    ])
    assert figures == {
        "queue_max": 40, "backlog_max_bytes": 4096, "spilled_load": 5, "dropped_load": 0,
        "writer_rows_per_s": 2_000.0, "writer_peak_rows_per_s": 4_000.0,
        "answered_per_s": 2_000.0,
    }
    assert writer_figures([sample(0.0, 0)])["writer_rows_per_s"] is None


@pytest.mark.parametrize(("change", "verdict"), [
    ({}, True),
    ({"spilled_load": 1}, False),
    ({"dropped_load": 3}, False),
    ({"rows": 999}, False),
    ({"drain_s": 2.5}, False),
    ({"drain_s": None}, False),
])
def test_kept_up_needs_no_spill_no_drop_and_every_row_within_the_window(
    change: dict[str, Any], verdict: bool
) -> None:
    row = {"spilled_load": 0, "dropped_load": 0, "rows": 1_000, "answered": 1_000,
           "drain_s": 0.4, **change}
    assert kept_up(row, window_s=2.0) is verdict


def test_the_results_hide_a_database_url() -> None:
    assert cli.hide_urls(["logging", "--database-url", "postgresql://u:pw@h/db",
                          "--database-url=postgresql://u:pw@h/db", "--rounds", "1"]) == [
        "logging", "--database-url", "URL", "--database-url=URL", "--rounds", "1"]
