"""``python -m loadtests.bench_replicas``: two gateway replicas on one PostgreSQL.

Two ``gateway serve`` processes, ``[server] replica_id`` "replica-a" and "replica-b", on
one PostgreSQL database and one artifacts directory, each with a data directory (request
log journal) of its own, the request log on at 100 % with payloads (so the database
carries the write load of every request), serving the anchors' ``logreg.onnx``
(``$ANCHORS_DIR/models``) or, without the anchors, a built-in logistic regression.

**Throughput.** The harness's closed loop (``--concurrency`` 32, ``--processes`` client
processes × ``--channels`` connections each) against replica-a alone, then against both
with the client processes alternating between the two ports (the connections split
evenly, as a per-connection balancer would). Reported: infer/s, the ratio two / one,
p50/p99, and the CPU of each gateway, of PostgreSQL (its postmaster and backends, when
the server's data directory is readable), of the client and of the whole machine over
the measured window.

**Promotion propagation.** With both serving, a second version (the same graph under
another ``doc_string``) is registered and ``gateway promote`` moves production back and
forth through replica-a's admin port (``--reps`` times, each after a random wait in
[0, ``policy_sync_s``) so it lands at a random point of replica-b's poll); both replicas
are asked every 5 ms (ModelInfer without a version: the answer's ``model_version``) until
each serves the new version. Reported: the time from the promote call returning (its
output line) to each replica's first answer with the new version, median and max, with
``[traffic] policy_sync_s`` at its default 2 s and at 0.5 s (the replicas restarted).

PostgreSQL: ``--database-url`` names a server (``postgresql+psycopg://…``); the benchmark
creates a database of its own there and drops it afterwards (with a role that may not
create databases, the URL's database is used when it is empty). Without it the benchmark
runs itself under ``scripts/pg-test.sh`` (a throwaway server, deleted afterwards). The
result goes to ``--work-dir`` (``replicas.json``, configs, server logs) and, between
markers, to ``--docs`` (default docs/benchmarks.md). Loopback only; every run is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from loadtests import bench_replicas_report, wire
from loadtests.bench import stop_group, wait_port_file
from loadtests.bench_postgres import Database, drop_database, open_database, postgres_cpu_probe
from loadtests.bench_probe import TICK, group_cpu_seconds
from loadtests.bench_profiles import TOKEN, second_version
from loadtests.drivers import Bounds, ClosedLoop
from loadtests.errors import LoadtestError, RunError
from loadtests.events import gateway_argv
from loadtests.runner import RunConfig, run_spawned, split
from loadtests.stats import Snapshot, latency_summary
from loadtests.workload import RandomPayload, RequestPool, build_pool, specs_from_metadata

REPO = Path(__file__).resolve().parent.parent
MODEL = "logreg"
NAMES = ("replica-a", "replica-b")
PG_ENV = "GATEWAY_TEST_POSTGRES_URL"  # set by scripts/pg-test.sh
POLL_S = 0.005
Mode = dict[str, Any]
MODES: dict[str, Mode] = {
    "default": {"duration": 20.0, "warmup": 3.0, "reps": 5, "sync": "2,0.5"},
    "quick": {"duration": 2.0, "warmup": 0.5, "reps": 2, "sync": "0.5"},
}


# ------------------------------------------------------------------------- the model

def builtin_logreg(seed: int = 0) -> bytes:
    """A logistic regression shaped like the anchors' (``input`` FP32 [-1,20] →
    ``label`` INT64 [-1], ``probabilities`` FP32 [-1,2]), for a machine without them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.standard_normal((20, 2)).astype(np.float32), "w"),
               numpy_helper.from_array(np.zeros(2, np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["input", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
             helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, MODEL, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 20])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=9, producer_name="loadtests.bench_replicas")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def model_file(anchors: Path, work: Path) -> tuple[Path, str]:
    """The ONNX file to serve and how the write-up names it."""
    anchor = anchors / "models" / f"{MODEL}.onnx"
    if anchor.exists():
        return anchor.resolve(), f"the anchors' `{MODEL}.onnx`"
    path = work / f"{MODEL}-builtin.onnx"
    path.write_bytes(builtin_logreg())
    return path, f"a built-in logistic regression (no `{anchor}`)"


# ------------------------------------------------------------------------- replicas

@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[Any]
    ports: dict[str, int]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def admin_target(self) -> str:
        return f"127.0.0.1:{self.ports['admin']}"


def replica_config(name: str, database_url: str, artifacts: Path, model: Path,
                   sync_s: float) -> str:
    q = json.dumps  # a TOML basic string
    return (f"[server]\nreplica_id = {q(name)}\n\n[database]\nurl = {q(database_url)}\n\n"
            f"[artifacts]\nroot = {q(str(artifacts))}\n\n"
            f"[traffic]\npolicy_sync_s = {sync_s}\n\n"
            "[request_log]\nenabled = true\nsample_rate = 1.0\ncapture_payload = true\n\n"
            f'[auth.tokens.bench]\ntoken = "{TOKEN}"\nrole = "operator"\n\n'
            f"[models.{MODEL}]\nartifact = {q(str(model))}\n")


@contextlib.contextmanager
def serving(name: str, work: Path, config: str, tag: str) -> Iterator[Replica]:
    """One ``gateway serve`` in a process group of its own, until the block ends."""
    path = work / f"{tag}-{name}.toml"
    path.write_text(config)
    port_file = work / f"{tag}-{name}-ports.json"
    argv = gateway_argv("serve", "--config", str(path), "--grpc-port", "0", "--http-port",
                        "0", "--admin-port", "0", "--data-dir", str(work / f"{name}-data"),
                        "--port-file", str(port_file))
    print(f"$ {' '.join(argv)}", file=sys.stderr, flush=True)
    with (work / f"{tag}-{name}-server.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            replica = Replica(name, proc, wait_port_file(port_file, proc, 180))
            wire.wait_model_ready(replica.grpc_target, MODEL, timeout_s=120)
            yield replica
        finally:
            stop_group(proc)


def _admin(argv: Sequence[str], timeout_s: float = 120) -> str:
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": TOKEN}
    try:
        done = subprocess.run(gateway_argv(*argv), capture_output=True, text=True, env=env,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise RunError(f"gateway {' '.join(argv)}: no answer in {timeout_s:.0f}s") from None
    if done.returncode != 0:
        raise RunError(f"gateway {' '.join(argv)}: {done.stderr.strip()[-400:]}")
    return done.stdout


def register(admin_target: str, path: Path) -> str:
    out = json.loads(_admin(["register", MODEL, str(path), "--target", admin_target, "--json"]))
    return str(out["version"]["version"])


@contextlib.contextmanager
def promoting(admin_target: str, version: str) -> Iterator[tuple[float, float]]:
    """``gateway promote``, yielding (monotonic start, instant its output line arrived =
    the RPC returned: the CLI prints it, unbuffered, right after the answer). The block
    runs while the CLI is still exiting (≈ 0.2 s here), so it is timed from the answer,
    not from the exit; the exit status is checked after it."""
    argv = gateway_argv("promote", MODEL, version, "--target", admin_target)
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    killer = threading.Timer(120, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        returned = time.monotonic()
        if line:
            yield started, returned
        _, err = proc.communicate()
    finally:
        killer.cancel()
        if proc.poll() is None:  # the block raised
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not line:
        raise RunError(f"gateway promote {MODEL} {version} failed ({proc.returncode}): "
                       f"{err.strip()[-400:]}")


# ------------------------------------------------------------------------ throughput

@dataclass(frozen=True)
class Load:
    concurrency: int
    duration_s: float
    warmup_s: float
    processes: int
    channels: int
    uvloop: bool


def machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICK


class Window:
    """CPU counters sampled at the measured window's start and end, from a thread."""

    def __init__(self, probes: dict[str, Callable[[], float]]) -> None:
        self.probes = {**probes, "machine": machine_busy_seconds}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, begin: float, end: float) -> None:
        def run() -> None:
            for instant in (begin, end):
                if self._cancel.wait(max(0.0, instant - time.monotonic())):
                    return
                self.samples.append(
                    (time.monotonic(), {k: p() for k, p in self.probes.items()}))

        self._thread = threading.Thread(target=run, name="bench-window", daemon=True)
        self._thread.start()

    def cores(self) -> dict[str, float]:
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()
        if len(self.samples) < 2:
            return {}
        (t0, a), (t1, b) = self.samples
        return {k: round((b[k] - a[k]) / (t1 - t0), 3) for k in a}


def run_spread(config: RunConfig, targets: Sequence[str], pool: RequestPool,
               on_start: Callable[[float, Sequence[int]], None]) -> Snapshot:
    """``run_load``'s multi-process run with client process ``i`` on ``targets[i % n]``."""
    specs = [replace(s, target=targets[s.index % len(targets)]) for s in split(config)]
    return run_spawned(specs, pool, config.bounds, on_start)


def measure_throughput(label: str, replicas: Sequence[Replica], pool: RequestPool,
                       load: Load, pg_cpu: Callable[[], float] | None) -> dict[str, Any]:
    config = RunConfig(replicas[0].grpc_target, ClosedLoop(load.concurrency),
                       Bounds(10**9, load.duration_s, load.warmup_s), processes=load.processes,
                       channels=load.channels, uvloop=load.uvloop, label=label)
    probes: dict[str, Callable[[], float]] = {
        r.name: functools.partial(group_cpu_seconds, r.proc.pid) for r in replicas}
    if pg_cpu is not None:
        probes["postgres"] = pg_cpu
    window = Window(probes)

    def on_start(start_at: float, _counters: Sequence[int]) -> None:
        begin = start_at + load.warmup_s
        window.start(begin, begin + load.duration_s)

    try:
        snapshot = run_spread(config, [r.grpc_target for r in replicas], pool, on_start)
    finally:
        cores = window.cores()
    latency = latency_summary(snapshot.ok)
    client_cpu = sum(c for c, _ in snapshot.cpu) / max(max(w for _, w in snapshot.cpu), 1e-9)
    accounted = sum(v for k, v in cores.items() if k != "machine") + client_cpu
    row = {
        "setup": label, "replicas": [r.name for r in replicas],
        "infer_per_s": round(snapshot.ok_count / max(snapshot.elapsed_s, 1e-9), 1),
        "ok": snapshot.ok_count, "errors": snapshot.error_counts(),
        "p50_us": latency["p50"], "p99_us": latency["p99"],
        "server_cores": {r.name: cores.get(r.name) for r in replicas},
        "postgres_cores": cores.get("postgres"), "client_cores": round(client_cpu, 3),
        "machine_cores": cores.get("machine"),
        "other_cores": (round(max(0.0, cores["machine"] - accounted), 3)
                        if "machine" in cores else None),
    }
    print(f"{label}: {row['infer_per_s']:.0f} infer/s p50={row['p50_us']} µs "
          f"p99={row['p99_us']} µs errors={row['errors']} cores={cores} "
          f"client={row['client_cores']}", file=sys.stderr, flush=True)
    return row


# ----------------------------------------------------------------------- propagation

def serving_version(channel: grpc.Channel, request: bytes) -> str:
    call = channel.unary_unary(wire.MODEL_INFER_METHOD, request_serializer=None,
                               response_deserializer=wire.served_version)
    return str(call(request, timeout=5.0))


def wait_serving(channels: dict[str, grpc.Channel], request: bytes, version: str,
                 deadline: float) -> tuple[dict[str, float], int]:
    """Monotonic instant of each replica's first answer served by ``version``, and the
    number of polls that failed meanwhile (a swap must not fail requests)."""
    seen: dict[str, float] = {}
    failed = 0
    while len(seen) < len(channels):
        if time.monotonic() > deadline:
            missing = sorted(set(channels) - set(seen))
            raise RunError(f"{', '.join(missing)} did not serve version {version} in time")
        for name, channel in channels.items():
            if name in seen:
                continue
            try:
                if serving_version(channel, request) == version:
                    seen[name] = time.monotonic()
            except grpc.RpcError:
                failed += 1
        time.sleep(POLL_S)
    return seen, failed


def measure_propagation(replicas: Sequence[Replica], request: bytes, versions: Sequence[str],
                        reps: int, sync_s: float, rng: random.Random) -> dict[str, Any]:
    channels = {r.name: grpc.insecure_channel(r.grpc_target) for r in replicas}
    rows: list[dict[str, Any]] = []
    try:
        current = serving_version(channels[replicas[0].name], request)
        for rep in range(reps):
            target = versions[0] if current != versions[0] else versions[1]
            # A random phase against the followers' poll, not one the last rep set.
            time.sleep(rng.uniform(0.0, sync_s))
            with promoting(replicas[0].admin_target, target) as (started, returned):
                seen, failed = wait_serving(channels, request, target,
                                            returned + 10 * sync_s + 60)
            rows.append({"rep": rep, "from": current, "to": target, "failed_polls": failed,
                         "promote_s": round(returned - started, 4),
                         "after_s": {n: round(t - returned, 4) for n, t in seen.items()}})
            print(f"policy_sync_s={sync_s} promote {current}->{target}: {rows[-1]['after_s']}",
                  file=sys.stderr, flush=True)
            current = target
    finally:
        for channel in channels.values():
            channel.close()
    summary = {}
    for replica in replicas:
        times = [r["after_s"][replica.name] for r in rows]
        summary[replica.name] = {"median_s": round(statistics.median(times), 4),
                                 "max_s": round(max(times), 4)}
    return {"policy_sync_s": sync_s, "reps": rows, "summary": summary,
            "promote_median_s": round(statistics.median(r["promote_s"] for r in rows), 4)}


# ------------------------------------------------------------------------------ main

def _sitting(args: argparse.Namespace, database: Database, work: Path) -> dict[str, Any]:
    mode = MODES["quick" if args.quick else "default"]
    load = Load(args.concurrency, args.duration or mode["duration"],
                mode["warmup"] if args.warmup is None else args.warmup, args.processes,
                args.channels, args.client_uvloop)
    syncs = [float(s) for s in (args.sync or mode["sync"]).split(",") if s]
    reps = args.reps or mode["reps"]
    model, model_desc = model_file(args.anchors_dir.resolve(), work)
    artifacts = work / "artifacts"
    pg_cpu = postgres_cpu_probe(database.url)
    rng = random.Random(0)
    versions: list[str] = []
    result: dict[str, Any] = {"model": model_desc, "postgres": database.version,
                              "load": load.__dict__, "throughput": [], "propagation": []}
    for i, sync_s in enumerate(syncs):
        tag = f"sync{sync_s:g}"

        def config(name: str, sync_s: float = sync_s) -> str:
            return replica_config(name, database.url, artifacts, model, sync_s)

        with serving(NAMES[0], work, config(NAMES[0]), tag) as a:
            specs = specs_from_metadata(wire.fetch_inputs(a.grpc_target, MODEL))
            pool = build_pool(MODEL, "", specs, RandomPayload(seed=0), 64)
            if i == 0:
                result["throughput"].append(
                    measure_throughput("one replica", [a], pool, load, pg_cpu))
            with serving(NAMES[1], work, config(NAMES[1]), tag) as b:
                if i == 0:
                    result["throughput"].append(
                        measure_throughput("two replicas", [a, b], pool, load, pg_cpu))
                    second = second_version(model, work / f"{MODEL}-v2.onnx")
                    versions = ["1", register(a.admin_target, second)]
                result["propagation"].append(measure_propagation(
                    [a, b], pool.payloads[0], versions, reps, sync_s, rng))
    one, two = (r["infer_per_s"] for r in result["throughput"])
    result["ratio"] = round(two / one, 3) if one else None
    return result


def _database_note(throwaway: bool, database: Database) -> str:
    server = ("a throwaway server of `scripts/pg-test.sh`" if throwaway
              else "the server of `--database-url`")
    own = "a database of the benchmark's own" if database.admin_url else "the URL's database"
    return f"{server}, {own}"


def command_line(argv: Sequence[str]) -> str:
    """The command as run, a database URL replaced by ``URL`` (it carries a password)."""
    shown, hide = [], False
    for arg in argv:
        if arg == "--under-pg-test":
            continue
        shown.append("URL" if hide else
                     ("--database-url=URL" if arg.startswith("--database-url=") else arg))
        hide = arg == "--database-url"
    return " ".join(["python -m loadtests.bench_replicas", *shown])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_replicas", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="shortest form: 2 s runs, 2 promotions, policy_sync_s 0.5 only")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 20)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per run (default 3)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--processes", type=int, default=2, help="client processes (even)")
    p.add_argument("--channels", type=int, default=4, help="connections per client process")
    p.add_argument("--client-uvloop", action="store_true", help="the client on uvloop")
    p.add_argument("--reps", type=int, help="promotions per policy_sync_s (default 5)")
    p.add_argument("--sync", help="policy_sync_s values, comma-separated (default 2,0.5)")
    p.add_argument("--database-url",
                   help="a PostgreSQL server (default: a throwaway one, scripts/pg-test.sh)")
    p.add_argument("--under-pg-test", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--docs", default=str(REPO / "docs" / "benchmarks.md"),
                   help="markdown file to update between markers, or 'none'")
    p.add_argument("--work-dir", type=Path,
                   help="configs, logs, replicas.json (default $ANCHORS_DIR/results/…)")
    p.add_argument("--anchors-dir", type=Path,
                   default=Path(os.environ.get("ANCHORS_DIR", "/tmp/anchors")))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    if args.database_url is None and not args.under_pg_test:
        script = REPO / "scripts" / "pg-test.sh"
        child = ["bash", str(script), "--", sys.executable, "-m", "loadtests.bench_replicas",
                 *raw, "--under-pg-test"]
        return subprocess.run(child, check=False).returncode
    if args.processes < 2 or args.processes % 2:
        print("error: --processes must be even (each replica gets half)", file=sys.stderr)
        return 2
    url = args.database_url or os.environ.get(PG_ENV, "")
    started = time.monotonic()
    when = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    anchors = args.anchors_dir.resolve()
    work = (args.work_dir or anchors / "results" / f"replicas-{datetime.now():%Y%m%d-%H%M%S}")
    work.mkdir(parents=True, exist_ok=True)
    try:
        database = open_database(url)
        try:
            result = _sitting(args, database, work)
        finally:
            try:
                drop_database(database)
            except RunError as exc:
                print(f"warning: {exc}", file=sys.stderr)
    except LoadtestError as exc:
        print(f"error: {exc} (logs: {work})", file=sys.stderr)
        return 2
    result.update(when=when, command=command_line(raw), work_dir=str(work),
                  minutes=round((time.monotonic() - started) / 60, 1),
                  database=_database_note(args.under_pg_test, database),
                  cores=os.cpu_count())
    (work / "replicas.json").write_text(json.dumps(result, indent=2))
    print(bench_replicas_report.table(result))
    if args.docs != "none":
        docs = Path(args.docs)
        existing = docs.read_text() if docs.exists() else ""
        docs.write_text(bench_replicas_report.splice(existing,
                                                     bench_replicas_report.markdown(result)))
        print(f"written: {docs}")
    print(f"written: {work / 'replicas.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
