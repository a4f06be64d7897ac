"""``logging``: what the request log costs a gateway, whether its writer keeps up, and
what a database outage does.

Starts ``gateway serve`` (the CLI, as an operator would) on a fresh data dir per round with
the request log off or on (100% sampled, payloads captured), alternating rounds
(off, on, off, on, …) so drift on a shared machine hits both alike, and measures each
with the same closed-loop run (and, with ``--perf-analyzer``, a perf_analyzer run at the
same concurrency). A last round keeps logging on while another connection holds the
database's write lock (SQLite: ``BEGIN EXCLUSIVE``; PostgreSQL: ``LOCK TABLE request_log,
feedback IN EXCLUSIVE MODE``) for the whole measurement: serving must not fail or slow
down, the records wait in the journal, and are replayed once the lock is released.
Server CPU per request comes from /proc (Linux only).

The database: SQLite in each round's data dir, or with ``--database-url`` a PostgreSQL
server, where the sitting gets a database of its own (created, dropped at the end), shared
by its rounds with one artifacts root.

Did the writer keep up with the closed loop (the gateway's peak rate)? During each
logging round the gateway's /metrics are sampled (``gateway_request_log_*``: queue depth,
journal backlog, spilled records, rows written); when the load stops, the rows of the
round are counted in the database until they match the requests the gateway answered
(``gateway_requests_total``). **Kept up**: no record spilled to the journal for replay
(the writer never fell behind the journal nor failed an insert), none dropped, and every
answered request in the database within ``--drain-window`` seconds of the load's end.
With ``--perf-analyzer`` the writer is judged again under perf_analyzer's load, a higher
rate than the harness's Python client leaves the gateway on a small machine.

Needs a local ``gateway`` executable and an ONNX file (``--artifact``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from loadtests import plots, report, wire
from loadtests.bench_postgres import (
    Database,
    drop_database,
    open_database,
    postgres_cpu_probe,
)
from loadtests.bench_probe import ForeignLoad, group_cpu_seconds, perf_analyzer
from loadtests.database_lock import write_locked
from loadtests.drivers import Bounds, ClosedLoop
from loadtests.errors import ConfigError, RunError
from loadtests.events import gateway_argv
from loadtests.runner import RunConfig, run_load
from loadtests.scenarios import options
from loadtests.scenarios.base import Context, Outcome
from loadtests.workload import RandomPayload, build_pool, specs_from_metadata

MODES = ("off", "on")
DB_DOWN = "on, database locked"
LOG_TABLES = ("request_log", "feedback")
LOG_METRICS = ("logged", "spilled", "replayed", "dropped")
GAUGES = ("backlog_bytes", "queue_depth", "queue_bytes")
ANSWERED = "gateway_requests_total"
DRAIN_POLL_S = 0.05


def gateway_config(model: str, artifact: Path, logging_on: bool,
                   database_url: str | None = None, artifacts: Path | None = None) -> str:
    """The gateway's TOML. A shared database (``database_url``) needs the artifacts root
    shared too (``artifacts``): the registry it holds names the files stored there."""
    database = ""
    if database_url:
        database = f"[database]\nurl = {json.dumps(database_url)}\n\n"
        if artifacts is not None:
            database += f"[artifacts]\nroot = {json.dumps(str(artifacts.resolve()))}\n\n"
    return (
        f"[server]\nshutdown_grace_s = 2\n\n{database}"
        f"[request_log]\nenabled = {str(logging_on).lower()}\n"
        f"sample_rate = 1.0\ncapture_payload = true\n\n"
        f'[models.{model}]\nartifact = "{artifact.resolve()}"\n'
    )


def log_metrics(http_port: int, model: str | None = None) -> dict[str, float]:
    """The request log's counters (all kinds and reasons summed) and gauges; with
    ``model``, also ``answered``: the inference requests the gateway answered for it (any
    status, every version)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as page:
        body = page.read().decode()
    out = dict.fromkeys((*LOG_METRICS, *GAUGES, "answered"), 0.0)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == ANSWERED:
                if sample.labels.get("model") == model:
                    out["answered"] += sample.value
                continue
            if not sample.name.startswith("gateway_request_log_"):
                continue
            name = sample.name.removeprefix("gateway_request_log_").removesuffix("_total")
            if name in out and not sample.name.endswith("_created"):
                out[name] += sample.value
    return out


class MetricsSampler:
    """``log_metrics`` every ``interval_s`` in a thread for the duration of a block (and
    once at each end); ``samples`` carry ``t_s``, seconds since the block began."""

    def __init__(self, http_port: int, model: str, interval_s: float) -> None:
        self.samples: list[dict[str, float]] = []
        self.failures = 0
        self._port, self._model, self._interval = http_port, model, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._t0 = 0.0

    def __enter__(self) -> MetricsSampler:
        self._t0 = time.monotonic()
        self._take()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._take()

    def _take(self) -> None:
        try:
            sample = log_metrics(self._port, self._model)
        except OSError:
            self.failures += 1
            return
        sample["t_s"] = time.monotonic() - self._t0
        self.samples.append(sample)


def writer_figures(samples: list[dict[str, float]]) -> dict[str, Any]:
    """What the samples of a load say about the writer: the deepest queue and backlog,
    what it spilled and dropped meanwhile, and the rows it wrote per second (over the
    whole load, and the best interval between two samples)."""
    if len(samples) < 2:
        return {"queue_max": None, "backlog_max_bytes": None, "spilled_load": None,
                "dropped_load": None, "writer_rows_per_s": None,
                "writer_peak_rows_per_s": None, "answered_per_s": None}
    first, last = samples[0], samples[-1]
    span = max(last["t_s"] - first["t_s"], 1e-9)

    def written(s: dict[str, float]) -> float:
        return s["logged"] + s["replayed"]

    peak = max((written(b) - written(a)) / (b["t_s"] - a["t_s"])
               for a, b in zip(samples, samples[1:], strict=False) if b["t_s"] > a["t_s"])
    return {
        "queue_max": int(max(s["queue_depth"] for s in samples)),
        "backlog_max_bytes": int(max(s["backlog_bytes"] for s in samples)),
        "spilled_load": int(last["spilled"] - first["spilled"]),
        "dropped_load": int(last["dropped"] - first["dropped"]),
        "writer_rows_per_s": round((written(last) - written(first)) / span, 1),
        "writer_peak_rows_per_s": round(peak, 1),
        "answered_per_s": round((last["answered"] - first["answered"]) / span, 1),
    }


class RowCounter:
    """Counts a model's rows in the ``request_log`` table of ``url``."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(url, poolclass=NullPool)

    def count(self, model: str) -> int:
        try:
            with self._engine.connect() as conn:
                return int(conn.execute(
                    text("SELECT count(*) FROM request_log WHERE model = :model"),
                    {"model": model}).scalar_one())
        except SQLAlchemyError as exc:
            raise RunError(f"cannot count the request log's rows: {exc}") from exc

    def close(self) -> None:
        self._engine.dispose()


def wait_rows(count: Callable[[], int], expected: int, start: float, timeout_s: float
              ) -> tuple[int, float | None]:
    """Poll ``count()`` until it reaches ``expected``: (rows, seconds since ``start``, a
    ``time.monotonic()``), the seconds None when ``timeout_s`` ran out first."""
    while True:
        rows = count()
        elapsed = time.monotonic() - start
        if rows >= expected:
            return rows, round(elapsed, 3)
        if elapsed > timeout_s:
            return rows, None
        time.sleep(DRAIN_POLL_S)


def kept_up(row: dict[str, Any], window_s: float) -> bool:
    """The verdict of a logging round (see the module docstring)."""
    drain = row["drain_s"]
    return (row["spilled_load"] == 0 and row["dropped_load"] == 0
            and row["rows"] == row["answered"] and drain is not None and drain <= window_s)


class Gateway:
    """``gateway serve`` in its own process group on a throwaway data dir."""

    def __init__(self, root: Path, config: str, gateway_bin: str | None,
                 database_url: str | None = None) -> None:
        root.mkdir(parents=True)
        (root / "gateway.toml").write_text(config)
        self.root = root
        self.database_url = (database_url
                             or f"sqlite:///{(root / 'data' / 'gateway.db').resolve()}")
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
        group.add_argument("--database-url", metavar="URL",
                           help="a PostgreSQL server (postgresql+psycopg://USER:PASSWORD@HOST"
                           ":PORT/DB): the gateways log into a database of the sitting's own "
                           "there, created and dropped (or into the URL's database when the "
                           "role may not create one and it is empty); default: SQLite in each "
                           "round's data dir")
        group.add_argument("--drain-window", type=float, default=2.0, metavar="S",
                           help="kept up: every answered request in the database within S "
                           "seconds of the load's end (default 2)")
        group.add_argument("--drain-timeout", type=float, default=120.0, metavar="S",
                           help="how long to wait for the rows after the load, to report "
                           "the drain time of a writer that fell behind (default 120)")
        group.add_argument("--metrics-interval", type=float, default=0.5, metavar="S",
                           help="sample the gateway's /metrics every S seconds during a "
                           "logging round (default 0.5)")
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
        for name in ("drain_window", "drain_timeout", "metrics_interval"):
            if getattr(args, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got "
                                  f"{getattr(args, name)}")
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="loadtests-logging-"))
        plan = [mode for _ in range(args.rounds) for mode in MODES]
        if not args.no_db_down:
            plan.append(DB_DOWN)
        runs: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        workload: dict[str, Any] = {}
        database: Database | None = None
        if args.database_url:
            database = open_database(args.database_url, prefix="bench_logging")
            ctx.note(f"logging: PostgreSQL {database.version}, database {database.name}")
        try:
            for index, mode in enumerate(plan):
                ctx.note(f"logging: round {index + 1}/{len(plan)}: {mode}")
                run, row, workload = self._round(args, ctx, work / f"round{index + 1}", mode,
                                                 database.url if database else None)
                runs.append(run)
                rows.append(row)
        finally:
            if database is not None:
                drop_database(database)
        summary = summarize(rows)
        summary["database"] = (f"postgresql {database.version.split()[0]}"
                               if database is not None else "sqlite")
        summary["drain_window_s"] = args.drain_window
        warnings = [w for r in runs for w in report.run_warnings(r)]
        warnings += [keep_up_warning(r["round"], label, figures, args.drain_window)
                     for r in rows for label, figures in judged(r)
                     if figures.get("kept_up") is False]
        outcome = Outcome(runs, workload, summary=summary, warnings=warnings)
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
        keep_rows = [(r["round"], label, f) for r in rows for label, f in judged(r)]
        if keep_rows:
            outcome.tables.append(report.table(
                ["round", "load", "database", "answered/s", "writer rows/s", "peak rows/s",
                 "queue max", "backlog max KiB", "spilled", "dropped", "answered", "rows",
                 "drain s", "postgres cores", "kept up"],
                [[n, label, summary["database"], f["answered_per_s"], f["writer_rows_per_s"],
                  f["writer_peak_rows_per_s"], f["queue_max"], _kib(f["backlog_max_bytes"]),
                  f["spilled_load"], f["dropped_load"], f["answered"], f["rows"],
                  f["drain_s"], f["postgres_cores"], _verdict(f["kept_up"])]
                 for n, label, f in keep_rows]))
        path = options.plot_target(args)
        if path is not None:
            outcome.plots.append(str(plots.timeline(runs, path, "request log off / on")))
        return outcome

    def _round(self, args: argparse.Namespace, ctx: Context, root: Path, mode: str,
               database_url: str | None
               ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        logging_on = mode != "off"
        config = gateway_config(args.model, args.artifact, logging_on, database_url,
                                root.parent / "artifacts")
        gateway = Gateway(root, config, args.gateway_bin, database_url)
        counter: RowCounter | None = None
        pg_cpu = postgres_cpu_probe(database_url) if database_url else None
        keep: dict[str, Any] = {}
        try:
            target = gateway.start(args.model)
            if logging_on:
                counter = RowCounter(gateway.database_url)
                baseline = counter.count(args.model)
            specs = specs_from_metadata(wire.fetch_inputs(target, args.model), args.batch)
            pool = build_pool(args.model, "", specs, RandomPayload("normal", 0), args.pool_size)
            workload = {"model": args.model, "inputs": [s.as_dict() for s in specs],
                        "pool_size": len(pool), "request_bytes": pool.request_bytes}
            run_config = RunConfig(
                target=target, plan=ClosedLoop(args.concurrency),
                bounds=Bounds(10**9, args.duration, args.warmup, 2.0),
                timeout_s=args.timeout, label=f"{mode}")
            sampler = (MetricsSampler(gateway.ports["http"], args.model, args.metrics_interval)
                       if logging_on else contextlib.nullcontext())
            outage = (write_locked(gateway.database_url, LOG_TABLES) if mode == DB_DOWN
                      else contextlib.nullcontext())
            with outage:
                cpu0, foreign, t0 = gateway.cpu_seconds(), ForeignLoad(), time.monotonic()
                pg0 = pg_cpu() if pg_cpu else 0.0
                with sampler:
                    result = run_load(run_config, pool, progress=ctx.progress())
                    load_end = time.monotonic()
                run = report.run_report(result)
                cpu = gateway.cpu_seconds() - cpu0
                wall = time.monotonic() - t0
                pg_cores = (pg_cpu() - pg0) / wall if pg_cpu else None
                # The server is a child not yet reaped: ForeignLoad counts it; take it out,
                # and the PostgreSQL server's share too (reported apart).
                others = max(0.0, foreign.cores() - cpu / wall - (pg_cores or 0.0))
                if isinstance(sampler, MetricsSampler):
                    keep = writer_figures(sampler.samples)
                if counter is not None and mode != DB_DOWN:
                    keep.update(self._drain(args, gateway, counter, baseline, load_end))
                row: dict[str, Any] = {}
                if args.perf_analyzer is not None:
                    # perf_analyzer drives the gateway harder than the harness's client:
                    # the writer is judged again at that rate.
                    judged = counter is not None and mode != DB_DOWN
                    pa_sampler = (MetricsSampler(gateway.ports["http"], args.model,
                                                 args.metrics_interval)
                                  if judged else contextlib.nullcontext())
                    pa_pg0, pa_t0 = (pg_cpu() if pg_cpu else 0.0), time.monotonic()
                    with pa_sampler:
                        pa = perf_analyzer(args.perf_analyzer, target, args.model,
                                           args.concurrency, root / "perf_analyzer",
                                           args.pa_interval_ms)
                        pa_end = time.monotonic()
                    row.update(pa_throughput=pa.get("throughput"), pa_p99_us=pa.get("p99_us"),
                               pa_cmd=pa["cmd"])
                    if isinstance(pa_sampler, MetricsSampler) and counter is not None:
                        pa_keep = writer_figures(pa_sampler.samples)
                        pa_keep.update(self._drain(args, gateway, counter, baseline, pa_end))
                        pa_keep["postgres_cores"] = (
                            round((pg_cpu() - pa_pg0) / (pa_end - pa_t0), 2) if pg_cpu else None)
                        pa_keep["kept_up"] = kept_up(pa_keep, args.drain_window)
                        row["pa_keep_up"] = pa_keep
                during = log_metrics(gateway.ports["http"])
            released = time.monotonic()
            if mode == DB_DOWN:
                # The lock is gone: everything journaled meanwhile must reach the database.
                assert counter is not None
                keep.update(self._drain(args, gateway, counter, baseline, released))
                if keep["drain_s"] is None:
                    raise RunError(f"the journal did not drain within {args.drain_timeout:g} s "
                                   "of the database coming back")
                deadline = time.monotonic() + args.drain_timeout
                while log_metrics(gateway.ports["http"])["backlog_bytes"] > 0:
                    if time.monotonic() > deadline:
                        raise RunError("the journal did not drain within "
                                       f"{args.drain_timeout:g} s of the database coming back")
                    time.sleep(0.2)
            after = log_metrics(gateway.ports["http"])
        finally:
            code = gateway.stop()
            if counter is not None:
                counter.close()
        # The CPU window covers the warm-up requests too.
        served = max(run["requests"]["sent"] + run["requests"]["warmup"], 1)
        row.update(
            round=int(root.name.removeprefix("round")), mode=mode,
            throughput_rps=run["throughput_rps"], p50_us=run["latency_us"]["p50"],
            p99_us=run["latency_us"]["p99"], errors=run["requests"]["errors"],
            server_cpu_us_per_request=round(cpu / served * 1e6, 1),
            spilled_during=during["spilled"], exit_code=code,
            other_cores=round(others, 2),
            postgres_cores=None if pg_cores is None else round(pg_cores, 2),
            **{k: after[k] for k in LOG_METRICS},
        )
        if logging_on:
            row.update(keep)
            row["kept_up"] = None if mode == DB_DOWN else kept_up(row, args.drain_window)
        return run, row, workload

    @staticmethod
    def _drain(args: argparse.Namespace, gateway: Gateway, counter: RowCounter,
               baseline: int, since: float) -> dict[str, Any]:
        """After the load (or the outage), which ended at ``since``: wait for the round's
        rows to match the requests the gateway answered. The requests answered are read
        again once they do (a request the client gave up on may still have been
        answered meanwhile)."""
        port = gateway.ports["http"]

        def rows() -> int:
            return counter.count(args.model) - baseline

        answered = int(log_metrics(port, args.model)["answered"])
        while True:
            found, drain_s = wait_rows(rows, answered, since, args.drain_timeout)
            latest = int(log_metrics(port, args.model)["answered"])
            if drain_s is None or latest == answered:
                return {"answered": latest, "rows": found, "drain_s": drain_s}
            answered = latest


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
        if any("writer_rows_per_s" in r for r in mine):
            verdicts = [f["kept_up"] for r in mine for _, f in judged(r)
                        if f.get("kept_up") is not None]
            drains = [r["drain_s"] for r in mine if r.get("drain_s") is not None]
            pa = [r["pa_keep_up"] for r in mine if "pa_keep_up" in r]
            modes[mode].update(
                kept_up=all(verdicts) if verdicts else None,
                writer_rows_per_s=mean("writer_rows_per_s"),
                answered_per_s=mean("answered_per_s"),
                spilled_load=sum(r["spilled_load"] or 0 for r in mine),
                drain_s_max=max(drains) if len(drains) == len(mine) else None,
                pa_writer_rows_per_s=mean("writer_rows_per_s", pa) if pa else None,
            )
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


def _kib(n: int | None) -> float | None:
    return None if n is None else round(n / 1024, 1)


def _verdict(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


def judged(row: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A logging round's loads and the writer's figures under each: the harness's closed
    loop (the row itself), then perf_analyzer's when it ran."""
    if "writer_rows_per_s" not in row:
        return []
    out = [(row["mode"], row)]
    if "pa_keep_up" in row:
        out.append((f"{row['mode']}, perf_analyzer", row["pa_keep_up"]))
    return out


def keep_up_warning(round_: int, label: str, f: dict[str, Any], window_s: float) -> str:
    drain = "not within the drain timeout" if f["drain_s"] is None else f"{f['drain_s']} s"
    return (f"round {round_} ({label}): the request log did not keep up: "
            f"{f['spilled_load']} records spilled to the journal and {f['dropped_load']} "
            f"dropped during the load; {f['rows']} of {f['answered']} answered requests in "
            f"the database after {drain} (window {window_s:g} s)")
