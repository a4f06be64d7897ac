"""``logging``: what the request log costs a gateway, and what a database outage does.

Starts ``gateway serve`` (the CLI, as an operator would) on a fresh data dir per round with
the request log off or on (100% sampled, payloads captured), alternating rounds
(off, on, off, on, …) so drift on a shared machine hits both alike, and measures each
with the same closed-loop run (and, with ``--perf-analyzer``, a perf_analyzer run at the
same concurrency). A last round keeps logging on while another connection holds the
SQLite database's write lock (``BEGIN EXCLUSIVE``) for the whole measurement: serving must
not fail or slow down, the records wait in the journal, and are replayed once the lock
is released. Server CPU per request comes from /proc (Linux only).

Needs a local ``gateway`` executable and an ONNX file (``--artifact``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loadtests import plots, report, wire
from loadtests.bench_probe import ForeignLoad, group_cpu_seconds, perf_analyzer
from loadtests.drivers import Bounds, ClosedLoop
from loadtests.errors import ConfigError, RunError
from loadtests.events import gateway_argv
from loadtests.runner import RunConfig, run_load
from loadtests.scenarios import options
from loadtests.scenarios.base import Context, Outcome
from loadtests.workload import RandomPayload, build_pool, specs_from_metadata

MODES = ("off", "on")
DB_DOWN = "on, database locked"
LOG_METRICS = ("logged", "spilled", "replayed", "dropped")


def gateway_config(model: str, artifact: Path, logging_on: bool) -> str:
    return (
        f"[server]\nshutdown_grace_s = 2\n\n[request_log]\nenabled = {str(logging_on).lower()}\n"
        f"sample_rate = 1.0\ncapture_payload = true\n\n"
        f'[models.{model}]\nartifact = "{artifact.resolve()}"\n'
    )


def log_metrics(http_port: int) -> dict[str, float]:
    """The request log's counters (all kinds and reasons summed) and backlog gauge."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    out = dict.fromkeys((*LOG_METRICS, "backlog_bytes"), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("gateway_request_log_").removesuffix("_total")
            if name in out and not sample.name.endswith("_created"):
                out[name] += sample.value
    return out


@contextlib.contextmanager
def locked(database: Path) -> Iterator[None]:
    """Another connection holds the database's write lock until the block ends."""
    conn = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("COMMIT")
    finally:
        conn.close()


class Gateway:
    """``gateway serve`` in its own process group on a throwaway data dir."""

    def __init__(self, root: Path, config: str, gateway_bin: str | None) -> None:
        root.mkdir(parents=True)
        (root / "gateway.toml").write_text(config)
        self.root = root
        self.port_file = root / "ports.json"
        self.argv = gateway_argv(
            "serve", "--config", str(root / "gateway.toml"), "--data-dir", str(root / "data"),
            "--grpc-port", "0", "--http-port", "0", "--admin-port", "0",
            "--port-file", str(self.port_file), "--log-level", "WARNING",
            gateway_bin=gateway_bin)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def start(self, model: str, timeout_s: float = 120) -> str:
        with (self.root / "server.log").open("wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RunError(f"gateway exited with {self.proc.returncode}; see "
                               f"{self.root / 'server.log'}")
            if time.monotonic() > deadline:
                raise RunError(f"gateway did not start within {timeout_s:.0f}s")
            time.sleep(0.1)
        self.ports = {k: int(v) for k, v in json.loads(self.port_file.read_text()).items()}
        target = f"127.0.0.1:{self.ports['grpc']}"
        wire.wait_model_ready(target, model, timeout_s=timeout_s)
        return target

    @property
    def database(self) -> Path:
        return self.root / "data" / "gateway.db"

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return group_cpu_seconds(self.proc.pid)

    def stop(self) -> int | None:
        """SIGTERM (the request log flushes), SIGKILL after 60 s."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        for sig, wait_s in ((signal.SIGTERM, 60.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                return self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        return None


class Logging:
    name = "logging"
    help = "request log off vs on (alternating rounds), and with the database down"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("gateway")
        group.add_argument("--model", default="logreg", help="model name (default logreg)")
        group.add_argument("--artifact", type=Path, required=True,
                           help="the ONNX file the gateway serves")
        group.add_argument("--gateway-bin", help="the gateway executable (default: beside "
                           "this Python, else on PATH)")
        group.add_argument("--rounds", type=int, default=2,
                           help="rounds of each mode, alternating (default 2)")
        group.add_argument("--no-db-down", action="store_true",
                           help="skip the round with the database locked")
        group.add_argument("--perf-analyzer", type=Path, metavar="PATH",
                           help="also run perf_analyzer (input:1,20) each round")
        group.add_argument("--pa-interval-ms", type=int, default=3000,
                           help="perf_analyzer measurement window (default 3000)")
        group.add_argument("--work-dir", type=Path,
                           help="where the data dirs go (default: a new temporary folder)")
        load = parser.add_argument_group("load")
        load.add_argument("--concurrency", type=int, default=8,
                          help="closed loop: requests in flight (default 8)")
        load.add_argument("--duration", type=float, default=10.0,
                          help="seconds measured per round (default 10)")
        load.add_argument("--warmup", type=float, default=2.0,
                          help="seconds of unrecorded load first (default 2)")
        load.add_argument("--timeout", type=float, default=10.0,
                          help="per-request deadline in seconds (default 10)")
        load.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
        load.add_argument("--pool-size", type=int, default=256,
                          help="distinct requests, cycled (default 256)")
        options.add_output_args(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> Outcome:
        if args.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
        if not args.artifact.is_file():
            raise ConfigError(f"--artifact {args.artifact}: no such file")
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="loadtests-logging-"))
        plan = [mode for _ in range(args.rounds) for mode in MODES]
        if not args.no_db_down:
            plan.append(DB_DOWN)
        runs: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        workload: dict[str, Any] = {}
        for index, mode in enumerate(plan):
            ctx.note(f"logging: round {index + 1}/{len(plan)}: {mode}")
            run, row, workload = self._round(args, ctx, work / f"round{index + 1}", mode)
            runs.append(run)
            rows.append(row)
        summary = summarize(rows)
        outcome = Outcome(runs, workload, summary=summary,
                          warnings=[w for r in runs for w in report.run_warnings(r)])
        outcome.tables.append(report.run_table(runs))
        outcome.tables.append(report.table(
            ["round", "mode", "ok/s", "p50 ms", "p99 ms", "errors", "server µs/req",
             "pa infer/s", "pa p99 ms", "logged", "spilled", "replayed", "dropped",
             "other cores"],
            [[r["round"], r["mode"], r["throughput_rps"], _ms(r["p50_us"]), _ms(r["p99_us"]),
              r["errors"], r["server_cpu_us_per_request"], r.get("pa_throughput"),
              _ms(r.get("pa_p99_us")), r["logged"], r["spilled"], r["replayed"], r["dropped"],
              r["other_cores"]] for r in rows]))
        outcome.tables.append(report.table(
            ["mode", "ok/s (mean)", "x off", "p99 ms (mean)", "x off", "server µs/req",
             "x off", "pa infer/s", "x off"],
            [[m, s["throughput_rps"], s["throughput_ratio"], _ms(s["p99_us"]), s["p99_ratio"],
              s["server_cpu_us_per_request"], s["cpu_ratio"], s["pa_throughput"],
              s["pa_ratio"]] for m, s in summary["modes"].items()]))
        path = options.plot_target(args)
        if path is not None:
            outcome.plots.append(str(plots.timeline(runs, path, "request log off / on")))
        return outcome

    def _round(self, args: argparse.Namespace, ctx: Context, root: Path, mode: str
               ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        gateway = Gateway(root, gateway_config(args.model, args.artifact, mode != "off"),
                          args.gateway_bin)
        try:
            target = gateway.start(args.model)
            specs = specs_from_metadata(wire.fetch_inputs(target, args.model), args.batch)
            pool = build_pool(args.model, "", specs, RandomPayload("normal", 0), args.pool_size)
            workload = {"model": args.model, "inputs": [s.as_dict() for s in specs],
                        "pool_size": len(pool), "request_bytes": pool.request_bytes}
            config = RunConfig(
                target=target, plan=ClosedLoop(args.concurrency),
                bounds=Bounds(10**9, args.duration, args.warmup, 2.0),
                timeout_s=args.timeout, label=f"{mode}")
            with locked(gateway.database) if mode == DB_DOWN else contextlib.nullcontext():
                cpu0, foreign, t0 = gateway.cpu_seconds(), ForeignLoad(), time.monotonic()
                run = report.run_report(run_load(config, pool, progress=ctx.progress()))
                cpu = gateway.cpu_seconds() - cpu0
                # The server is a child not yet reaped: ForeignLoad counts it; take it out.
                others = max(0.0, foreign.cores() - cpu / (time.monotonic() - t0))
                row: dict[str, Any] = {}
                if args.perf_analyzer is not None:
                    pa = perf_analyzer(args.perf_analyzer, target, args.model, args.concurrency,
                                       root / "perf_analyzer", args.pa_interval_ms)
                    row.update(pa_throughput=pa.get("throughput"), pa_p99_us=pa.get("p99_us"),
                               pa_cmd=pa["cmd"])
                during = log_metrics(gateway.ports["http"])
            if mode == DB_DOWN:
                # The lock is gone: everything journaled meanwhile must reach the database.
                deadline = time.monotonic() + 120
                while log_metrics(gateway.ports["http"])["backlog_bytes"] > 0:
                    if time.monotonic() > deadline:
                        raise RunError("the journal did not drain within 120 s of the database "
                                       "coming back")
                    time.sleep(0.2)
            after = log_metrics(gateway.ports["http"])
        finally:
            code = gateway.stop()
        # The CPU window covers the warm-up requests too.
        served = max(run["requests"]["sent"] + run["requests"]["warmup"], 1)
        row.update(
            round=int(root.name.removeprefix("round")), mode=mode,
            throughput_rps=run["throughput_rps"], p50_us=run["latency_us"]["p50"],
            p99_us=run["latency_us"]["p99"], errors=run["requests"]["errors"],
            server_cpu_us_per_request=round(cpu / served * 1e6, 1),
            spilled_during=during["spilled"], exit_code=code,
            other_cores=round(others, 2),
            **{k: after[k] for k in LOG_METRICS},
        )
        return run, row, workload


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: means over its rounds, and ratios to logging off."""
    modes: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]

        def mean(key: str, rows_: list[dict[str, Any]] = mine) -> float | None:
            values = [r[key] for r in rows_ if r.get(key) is not None]
            return round(statistics.fmean(values), 1) if values else None

        modes[mode] = {
            "rounds": len(mine),
            "throughput_rps": mean("throughput_rps"),
            "p99_us": mean("p99_us"),
            "server_cpu_us_per_request": mean("server_cpu_us_per_request"),
            "pa_throughput": mean("pa_throughput"),
            "errors": sum(r["errors"] for r in mine),
            "dropped": sum(r["dropped"] for r in mine),
        }
    off = modes.get("off", {})
    for stats in modes.values():
        stats["throughput_ratio"] = _ratio(stats["throughput_rps"], off.get("throughput_rps"))
        stats["p99_ratio"] = _ratio(stats["p99_us"], off.get("p99_us"))
        stats["cpu_ratio"] = _ratio(stats["server_cpu_us_per_request"],
                                    off.get("server_cpu_us_per_request"))
        stats["pa_ratio"] = _ratio(stats["pa_throughput"], off.get("pa_throughput"))
    return {"modes": modes, "rounds": rows}


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else round(value / reference, 3)


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)
