"""``swap``: promotions and rollbacks during load, the way an operator does them.

Runs one load and, at the given times, ``gateway promote MODEL VERSION`` or ``gateway
rollback MODEL`` as subprocesses against the admin service (the token from ``--token`` or
``$GATEWAY_ADMIN_TOKEN``, passed through the environment, never on a command line). Each
command is marked on the timeline (start and end). Reports the failed requests, the p99
of the swap windows (the statistics windows overlapping a command, from its start to
``--settle`` seconds after its end) against the p99 of the other (steady) windows, and
the versions served.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from loadtests import plots, report
from loadtests.errors import ConfigError
from loadtests.events import CommandSchedule, gateway_argv
from loadtests.runner import RunResult, run_load
from loadtests.scenarios import options
from loadtests.scenarios.base import Context, Outcome
from loadtests.stats import WINDOW_SIG_FIGS, new_histogram

TOKEN_ENV = "GATEWAY_ADMIN_TOKEN"


def parse_action(item: str, kind: str) -> tuple[float, str | None]:
    """``T:VERSION`` (promote) or ``T`` (rollback) → (seconds, version or None)."""
    at, sep, version = item.partition(":")
    try:
        at_s = float(at)
    except ValueError:
        at_s = -1.0
    if at_s < 0 or (kind == "promote" and (not sep or not version.isdigit())):
        form = "SECONDS:VERSION" if kind == "promote" else "SECONDS"
        raise ConfigError(f"--{kind} {item!r}: expected {form}")
    return at_s, (version if kind == "promote" else None)


def build_schedule(args: argparse.Namespace) -> CommandSchedule:
    env = dict(os.environ)
    if args.token:
        env[TOKEN_ENV] = args.token
    schedule = CommandSchedule(env=env)
    actions = [(*parse_action(p, "promote"), "promote") for p in args.promote or []]
    actions += [(*parse_action(r, "rollback"), "rollback") for r in args.rollback or []]
    if not actions:
        raise ConfigError("give at least one --promote T:VERSION or --rollback T")
    for at_s, version, _kind in sorted(actions, key=lambda a: a[0]):
        cli = (["promote", args.model, version] if version is not None
               else ["rollback", args.model])
        argv = gateway_argv(*cli, "--target", args.admin_target, gateway_bin=args.gateway_bin)
        schedule.add(at_s, argv, label=" ".join(cli), timeout_s=args.command_timeout)
    return schedule


def swap_windows(result: RunResult, window_s: float, settle_s: float) -> set[int]:
    """Indices of the statistics windows overlapping a command (start → end + settle)."""
    indices: set[int] = set()
    for command in result.commands:
        if command.started_s is None:
            continue
        end = (command.finished_s if command.finished_s is not None else command.started_s)
        first = max(0, math.floor(command.started_s / window_s))
        last = math.floor((end + settle_s) / window_s)
        indices.update(range(first, last + 1))
    return indices


def window_p99s(result: RunResult, swapping: set[int]) -> dict[str, Any]:
    """p99 (µs) and counts of the swap windows vs the steady ones."""
    merged = {"swap": new_histogram(WINDOW_SIG_FIGS), "steady": new_histogram(WINDOW_SIG_FIGS)}
    errors = {"swap": 0, "steady": 0}
    for index, tally in result.snapshot.windows.items():
        part = "swap" if index in swapping else "steady"
        merged[part].add(tally.latency)
        errors[part] += tally.errors
    out: dict[str, Any] = {}
    for part, hist in merged.items():
        count = int(hist.get_total_count())
        out[part] = {"ok": count, "errors": errors[part],
                     "p99_us": int(hist.get_value_at_percentile(99)) if count else None}
    swap, steady = out["swap"]["p99_us"], out["steady"]["p99_us"]
    out["p99_ratio"] = round(swap / steady, 3) if swap and steady else None
    return out


class Swap:
    name = "swap"
    help = "promotions and rollbacks (the gateway CLI) during load: failures and swap-window p99"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        options.add_target_args(parser)
        options.add_workload_args(parser)
        options.add_load_args(parser, duration=20.0)
        group = parser.add_argument_group("swaps")
        group.add_argument("--admin-target", default="127.0.0.1:8002", metavar="HOST:PORT",
                           help="the gateway's admin service (default 127.0.0.1:8002)")
        group.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                           help=f"admin bearer token (default ${TOKEN_ENV})")
        group.add_argument("--gateway-bin", help="the gateway executable (default: beside this "
                           "Python, else on PATH)")
        group.add_argument("--promote", action="append", metavar="SECONDS:VERSION",
                           help="run `gateway promote MODEL VERSION` at t=SECONDS (repeatable)")
        group.add_argument("--rollback", action="append", metavar="SECONDS",
                           help="run `gateway rollback MODEL` at t=SECONDS (repeatable)")
        group.add_argument("--settle", type=float, default=1.0,
                           help="seconds after a command still counted as its swap window "
                                "(default 1)")
        group.add_argument("--max-p99-ratio", type=float, default=2.0,
                           help="warn when swap-window p99 exceeds this × steady p99 "
                                "(default 2)")
        group.add_argument("--command-timeout", type=float, default=60.0,
                           help="seconds before a CLI command is killed (default 60)")
        options.add_output_args(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> Outcome:
        (target,) = options.targets(args)
        if args.settle < 0:
            raise ConfigError(f"--settle must be >= 0, got {args.settle}")
        schedule = build_schedule(args)
        workload = options.build_workload(args, target)
        plan = options.plan_from_args(args)
        config = options.config_from_args(args, target, plan, "swap")
        result = run_load(config, workload.pool, schedule=schedule, progress=ctx.progress())
        run = report.run_report(result)
        swapping = swap_windows(result, config.window_s, args.settle)
        p99s = window_p99s(result, swapping)
        commands = run["commands"]
        failed_commands = [c for c in commands if c["returncode"] != 0]
        errors = run["requests"]["errors"]
        ratio = p99s["p99_ratio"]
        passed = (errors == 0 and not failed_commands
                  and (ratio is None or ratio <= args.max_p99_ratio))
        summary = {
            "passed": passed, "failed_requests": errors,
            "errors_by_code": run["errors_by_code"],
            "swap_windows": sorted(swapping), "windows": p99s,
            "versions": {v: r["count"] for v, r in run["versions"].items()},
            "commands": commands,
        }
        outcome = Outcome([run], workload.description, summary=summary,
                          warnings=report.run_warnings(run))
        outcome.tables.append(report.run_table([run]))
        outcome.tables.append(report.table(
            ["part", "windows", "ok", "errors", "p99 ms"],
            [[part, len(swapping) if part == "swap" else len(run["windows"]) - len(swapping),
              p99s[part]["ok"], p99s[part]["errors"],
              None if p99s[part]["p99_us"] is None else round(p99s[part]["p99_us"] / 1000, 3)]
             for part in ("steady", "swap")]))
        outcome.tables.append(report.table(
            ["command", "start s", "end s", "rc"],
            [[c["label"], c["started_s"], c["finished_s"], c["returncode"]] for c in commands]))
        if errors:
            outcome.warnings.append(f"{errors} request(s) failed during the run: "
                                    f"{run['errors_by_code']}")
        outcome.warnings.extend(
            f"command {c['label']!r} ended with {c['returncode']}: {c['output_tail'][-300:]}"
            for c in failed_commands)
        if ratio is not None and ratio > args.max_p99_ratio:
            outcome.warnings.append(
                f"swap-window p99 is {ratio:.2f}x the steady p99 (limit {args.max_p99_ratio:g}x)")
        path = options.plot_target(args)
        if path is not None:
            outcome.plots.append(str(plots.timeline([run], path, f"swap on {target}")))
        return outcome
