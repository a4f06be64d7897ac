"""``retrain``: what a lifecycle run costs serving — p99 while a model trains vs steady.

Starts ``gateway serve`` (the CLI, as an operator would) with the ONNX file ``--artifact``
and a lifecycle table for it (deploy policy ``manual``, so the run never changes what is
served; the estimator ``--estimator`` with ``--params``, by default an MLP that trains for
about ten seconds on one core). Then:

1. seed: ``--seed-rows`` requests with ids, and their labels through ``gateway feedback``
   (a learnable rule on the first two features), so the run has data to train on;
2. capacity: a closed-loop run at ``--concurrency``; the open-loop rate of the next two
   runs is ``--load-fraction`` of its throughput;
3. steady: an open-loop run at that rate, nothing else happening;
4. retrain: the same run, with ``gateway retrain NAME --wait`` at t=1 s;

steady and retrain alternate for ``--rounds`` pairs (drift on a shared machine hits both).

The run's steps (``gateway runs show ID --json``) say when training ran (wall clock,
mapped onto the run's clock); the latency histograms of the windows entirely inside the
train steps are merged, as are every window of the steady runs, so both p99s come from
the same ±1 % histograms. Target: p99 while training ≤ ``--target-ratio`` × steady p99.

Needs a local ``gateway`` executable and a model with one 2-D FP32 input (the loop trains
single-input classifiers), e.g. the demo model's 20 features.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtests import plots, report, wire
from loadtests.drivers import Bounds, ClosedLoop, OpenLoop
from loadtests.errors import ConfigError, RunError
from loadtests.events import CommandSchedule, EventLog, gateway_argv
from loadtests.runner import RunConfig, RunResult, run_load
from loadtests.scenarios import options
from loadtests.scenarios.base import Context, Outcome
from loadtests.scenarios.logging import Gateway
from loadtests.stats import WINDOW_SIG_FIGS, new_histogram
from loadtests.workload import RandomPayload, build_pool, specs_from_metadata

TOKEN = "loadtests-operator"
DEFAULT_ESTIMATOR = "sklearn.neural_network.MLPClassifier"
DEFAULT_PARAMS = {"hidden_layer_sizes": [256, 256], "max_iter": 150, "tol": 0.0,
                  "n_iter_no_change": 1000}


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # numbers, strings and booleans read the same in TOML


def gateway_config(model: str, artifact: Path, estimator: str, params: dict[str, Any],
                   nice: int, train_cpu_share: float = 0.5) -> str:
    return (
        f'[server]\nshutdown_grace_s = 2\n\n[auth.tokens.loadtests]\ntoken = "{TOKEN}"\n'
        f'role = "operator"\n\n[lifecycle]\nnice = {nice}\n'
        f"train_cpu_share = {train_cpu_share}\n\n"
        f'[models.{model}]\nartifact = "{artifact.resolve()}"\n\n'
        f'[models.{model}.lifecycle]\nestimator = "{estimator}"\n'
        f"params = {_toml_value(params)}\nwindow_s = 86400\nmin_rows = 100\n"
        f"min_per_class = 10\ntimeout_s = 900\n\n"
        f"[models.{model}.lifecycle.gates]\nmax_auc_drop = 1.0\n\n"
        f'[models.{model}.lifecycle.deploy]\npolicy = "manual"\n'
    )


def _cli(*args: str, gateway_bin: str | None, timeout_s: float = 120.0) -> str:
    argv = gateway_argv(*args, gateway_bin=gateway_bin)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RunError(f"{' '.join(argv[1:3])} failed ({done.returncode}): "
                       f"{done.stderr.strip()[-500:]}")
    return done.stdout


async def _seed_requests(target: str, model: str, name: str, X: np.ndarray) -> None:
    async with grpc.aio.insecure_channel(target, options=wire.CHANNEL_OPTIONS) as channel:
        infer = wire.infer_method(channel)
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            data = wire.encode_infer_request(model, "", [wire.RawTensor(
                name, "FP32", (1, X.shape[1]), X[i:i + 1].astype("<f4").tobytes())],
                request_id=f"seed-{i}")
            async with gate:
                await infer(data, timeout=30)

        await asyncio.gather(*(one(i) for i in range(len(X))))


def _wall(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _merged_p99(parts: list[tuple[RunResult, float, float]]) -> tuple[int | None, int]:
    """p99 (µs) and count of the successful requests of the windows entirely inside
    [start_s, end_s] on each run's clock, merged."""
    merged = new_histogram(WINDOW_SIG_FIGS)
    for result, start_s, end_s in parts:
        window = result.config.window_s
        for index, tally in result.snapshot.windows.items():
            if index * window >= start_s and (index + 1) * window <= end_s:
                merged.add(tally.latency)
    count = int(merged.get_total_count())
    return (int(merged.get_value_at_percentile(99)) if count else None), count


@dataclass(frozen=True)
class _Round:
    """One steady run and one run with a lifecycle run training; ``train`` and ``whole``
    are the train step and the whole lifecycle run on the training run's clock (s)."""

    steady: RunResult
    training: RunResult
    train: tuple[float, float]
    whole: tuple[float, float]
    run: dict[str, Any]


class Retrain:
    name = "retrain"
    help = "serving p99 while a lifecycle run trains vs steady (open loop, half capacity)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("gateway")
        group.add_argument("--model", default="fraud", help="model name (default fraud)")
        group.add_argument("--artifact", type=Path, required=True,
                           help="the ONNX file the gateway serves (one FP32 [-1, F] input)")
        group.add_argument("--gateway-bin", help="the gateway executable (default: beside "
                           "this Python, else on PATH)")
        group.add_argument("--estimator", default=DEFAULT_ESTIMATOR,
                           help=f"what the run trains (default {DEFAULT_ESTIMATOR})")
        group.add_argument("--params", type=json.loads, default=DEFAULT_PARAMS,
                           help=f"its params as JSON (default {json.dumps(DEFAULT_PARAMS)})")
        group.add_argument("--nice", type=int, default=10,
                           help="the training process's nice increment (default 10)")
        group.add_argument("--train-cpu-share", type=float, default=0.5,
                           help="the share of one core the training process may use "
                                "([lifecycle] train_cpu_share; default 0.5)")
        group.add_argument("--seed-rows", type=int, default=6000,
                           help="labelled requests to train on (default 6000)")
        group.add_argument("--work-dir", type=Path,
                           help="where the data dir goes (default: a new temporary folder)")
        load = parser.add_argument_group("load")
        load.add_argument("--concurrency", type=int, default=8,
                          help="closed loop of the capacity run (default 8)")
        load.add_argument("--capacity-duration", type=float, default=8.0,
                          help="seconds of the capacity run (default 8)")
        load.add_argument("--load-fraction", type=float, default=0.5,
                          help="open-loop rate as a share of capacity (default 0.5)")
        load.add_argument("--duration", type=float, default=25.0,
                          help="seconds of the steady and of the retrain run (default 25)")
        load.add_argument("--warmup", type=float, default=2.0,
                          help="seconds of unrecorded load before each run (default 2)")
        load.add_argument("--timeout", type=float, default=10.0,
                          help="per-request deadline in seconds (default 10)")
        load.add_argument("--rounds", type=int, default=2,
                          help="steady + retrain pairs, alternating; the p99s merge all "
                               "rounds (default 2)")
        load.add_argument("--target-ratio", type=float, default=1.5,
                          help="p99 while training over steady p99 must stay below this "
                               "(default 1.5)")
        options.add_output_args(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> Outcome:
        if not args.artifact.is_file():
            raise ConfigError(f"--artifact {args.artifact}: no such file")
        if args.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
        if not 0 < args.load_fraction <= 1:
            raise ConfigError(f"--load-fraction must be within (0, 1], got {args.load_fraction}")
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="loadtests-retrain-"))
        gateway = Gateway(work / "gateway", gateway_config(
            args.model, args.artifact, args.estimator, args.params, args.nice,
            args.train_cpu_share),
            args.gateway_bin)
        try:
            target = gateway.start(args.model)
            admin = ["--target", f"127.0.0.1:{gateway.ports['admin']}", "--token", TOKEN]
            return self._measure(args, ctx, gateway, target, admin, work)
        finally:
            gateway.stop()

    def _measure(self, args: argparse.Namespace, ctx: Context, gateway: Gateway, target: str,
                 admin: list[str], work: Path) -> Outcome:
        inputs = wire.fetch_inputs(target, args.model)
        if len(inputs) != 1 or inputs[0].datatype != "FP32" or len(inputs[0].shape) != 2:
            raise ConfigError(f"{args.model}: the loop trains models with one 2-D FP32 "
                              f"input; this one has {inputs}")
        specs = specs_from_metadata(inputs, 1)
        width = specs[0].shape[1]
        ctx.note(f"retrain: seeding {args.seed_rows} labelled requests")
        rng = np.random.default_rng(0)
        X = rng.normal(size=(args.seed_rows, width)).astype(np.float32)
        score = X[:, 0] + 0.5 * X[:, min(1, width - 1)] + rng.normal(size=len(X))
        y = (score > 0.8).astype(int)
        asyncio.run(_seed_requests(target, args.model, inputs[0].name, X))
        labels = work / "labels.csv"
        labels.write_text("request_id,label\n" + "".join(
            f"seed-{i},{label}\n" for i, label in enumerate(y.tolist())))
        _cli("feedback", args.model, "--file", str(labels), "--inference-target", target,
             gateway_bin=args.gateway_bin)

        pool = build_pool(args.model, "", specs, RandomPayload("normal", 1), 256)
        workload = {"model": args.model, "inputs": [s.as_dict() for s in specs],
                    "pool_size": len(pool), "request_bytes": pool.request_bytes}

        def measure(plan: Any, label: str, schedule: CommandSchedule | None = None,
                    events: EventLog | None = None) -> RunResult:
            config = RunConfig(target=target, plan=plan,
                               bounds=Bounds(10**9, args.duration if label != "capacity"
                                             else args.capacity_duration, args.warmup, 2.0),
                               timeout_s=args.timeout, label=label)
            return run_load(config, pool, schedule=schedule, progress=ctx.progress(),
                            events=events)

        ctx.note(f"retrain: capacity (closed loop, concurrency {args.concurrency})")
        capacity = measure(ClosedLoop(args.concurrency), "capacity")
        capacity_rps = report.run_report(capacity)["throughput_rps"]
        rate = round(capacity_rps * args.load_fraction, 1)
        ctx.note(f"retrain: capacity {capacity_rps:.0f} req/s; open loop at {rate:g} req/s")
        rounds = []
        for index in range(1, args.rounds + 1):
            ctx.note(f"retrain: round {index}/{args.rounds}: steady, then a run training")
            steady = measure(OpenLoop(rate), f"steady {index}")
            rounds.append(self._training_round(args, measure, rate, index, steady, admin))
        return self._outcome(args, capacity, rate, rounds, workload)

    def _training_round(self, args: argparse.Namespace, measure: Any, rate: float, index: int,
                        steady: RunResult, admin: list[str]) -> _Round:
        schedule = CommandSchedule()
        schedule.add(1.0, gateway_argv("retrain", args.model, "--wait", "--reason",
                                       f"loadtests retrain scenario, round {index}", *admin,
                                       gateway_bin=args.gateway_bin),
                     label="gateway retrain", timeout_s=args.duration + 900)
        events = EventLog()
        wall0, mono0 = time.time(), time.monotonic()
        training = measure(OpenLoop(rate), f"retrain {index}", schedule, events)
        # t=0 of the run's clock as wall time, to place the run's steps on it.
        probe_at = time.monotonic()
        origin_wall = wall0 + (probe_at - events.mark("origin", at=probe_at).t_s - mono0)
        (newest,) = json.loads(_cli("runs", "list", args.model, "--limit", "1", "--json",
                                    *admin, gateway_bin=args.gateway_bin))
        run = json.loads(_cli("runs", "show", str(newest["id"]), "--json", *admin,
                              gateway_bin=args.gateway_bin))
        steps = {s["name"]: s for s in run["steps"]}
        if run["status"] not in ("succeeded", "rejected") or "train" not in steps or \
                "end_time" not in steps["train"]:
            raise RunError(f"run {run['id']} ended {run['status']}: {run['error'][:500]}")
        train = (_wall(steps["train"]["start_time"]) - origin_wall,
                 _wall(steps["train"]["end_time"]) - origin_wall)
        whole = (_wall(run["start_time"]) - origin_wall, _wall(run["end_time"]) - origin_wall)
        return _Round(steady, training, train, whole, run)

    def _outcome(self, args: argparse.Namespace, capacity: RunResult, rate: float,
                 rounds: list[_Round], workload: dict[str, Any]) -> Outcome:
        runs = [report.run_report(capacity)]
        for r in rounds:
            runs += [report.run_report(r.steady), report.run_report(r.training)]
        steady_p99, steady_n = _merged_p99([(r.steady, 0.0, float("inf")) for r in rounds])
        train_p99, train_n = _merged_p99([(r.training, *r.train) for r in rounds])
        run_p99, run_n = _merged_p99([(r.training, *r.whole) for r in rounds])
        ratio = _ratio(train_p99, steady_p99)
        summary = {
            "capacity_rps": runs[0]["throughput_rps"], "rate_rps": rate,
            "steady_p99_us": steady_p99, "steady_requests": steady_n,
            "train_p99_us": train_p99, "train_requests": train_n,
            "run_p99_us": run_p99, "run_requests": run_n, "ratio": ratio,
            "run_ratio": _ratio(run_p99, steady_p99), "target_ratio": args.target_ratio,
            "passed": ratio is not None and ratio <= args.target_ratio,
            "errors": {r["label"]: r["requests"]["errors"] for r in runs},
            "estimator": args.estimator, "params": args.params, "nice": args.nice,
            "train_cpu_share": args.train_cpu_share,
            "rounds": [self._round_summary(r) for r in rounds],
        }
        warnings = [w for r in runs for w in report.run_warnings(r)]
        if train_n == 0:
            warnings.append("no full statistics window fell inside a train step: train "
                            "longer (--params)")
        elif not summary["passed"]:
            warnings.append(f"p99 while training is {ratio}x steady, above the target "
                            f"{args.target_ratio}x")
        outcome = Outcome(runs, workload, summary=summary, warnings=warnings)
        outcome.tables.append(report.run_table(runs))
        rows = []
        for index, r in enumerate(rounds, 1):
            s, t, w = (_merged_p99([(r.steady, 0.0, float("inf"))]),
                       _merged_p99([(r.training, *r.train)]),
                       _merged_p99([(r.training, *r.whole)]))
            rows += [[index, "steady", f"0-{args.duration:g}", s[1], _ms(s[0]), 1.0],
                     [index, "train step", f"{r.train[0]:.1f}-{r.train[1]:.1f}", t[1],
                      _ms(t[0]), _ratio(t[0], s[0])],
                     [index, "whole run", f"{r.whole[0]:.1f}-{r.whole[1]:.1f}", w[1],
                      _ms(w[0]), _ratio(w[0], s[0])]]
        rows += [["all", "steady", "", steady_n, _ms(steady_p99), 1.0],
                 ["all", "train step", "", train_n, _ms(train_p99), ratio],
                 ["all", "whole run", "", run_n, _ms(run_p99), summary["run_ratio"]]]
        outcome.tables.append(report.table(
            ["round", "phase", "window s", "requests", "p99 ms", "x steady"], rows))
        path = options.plot_target(args)
        if path is not None:
            outcome.plots.append(str(plots.timeline(runs[1:], path,
                                                    "steady vs a lifecycle run training")))
        return outcome

    @staticmethod
    def _round_summary(r: _Round) -> dict[str, Any]:
        return {"train_window_s": [round(r.train[0], 3), round(r.train[1], 3)],
                "run_window_s": [round(r.whole[0], 3), round(r.whole[1], 3)],
                "run": {"id": r.run["id"], "status": r.run["status"],
                        "outcome": r.run["outcome"],
                        "steps": {s["name"]: round(s["duration_s"], 3)
                                  for s in r.run["steps"]}}}


def _ratio(value: int | None, reference: int | None) -> float | None:
    return round(value / reference, 3) if value and reference else None


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)
