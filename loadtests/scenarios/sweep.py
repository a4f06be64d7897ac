"""``sweep``: the throughput/latency curve over a list of concurrencies (closed loop)."""

from __future__ import annotations

import argparse

from loadtests import plots, report
from loadtests.drivers import ClosedLoop
from loadtests.errors import ConfigError
from loadtests.runner import run_load
from loadtests.scenarios import options
from loadtests.scenarios.base import Context, Outcome


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--levels {text!r}: expected comma-separated integers") from None
    if not levels or any(c < 1 for c in levels):
        raise ConfigError(f"--levels {text!r}: need positive concurrencies")
    return levels


class Sweep:
    name = "sweep"
    help = "closed-loop runs over increasing concurrency, one curve"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        options.add_target_args(parser)
        options.add_workload_args(parser)
        options.add_load_args(parser, open_loop=False, duration=5.0, concurrency=False)
        parser.add_argument(
            "--levels",
            default="1,2,4,8,16,32,64",
            help="concurrencies to run, in order (default 1,2,4,8,16,32,64); "
            "--duration and --max-requests bound each level",
        )
        options.add_output_args(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> Outcome:
        (target,) = options.targets(args)
        levels = parse_levels(args.levels)
        workload = options.build_workload(args, target)
        runs, points = [], []
        for level in levels:
            config = options.config_from_args(
                args, target, ClosedLoop(level), f"c={level}", processes=min(args.processes, level)
            )
            run = report.run_report(run_load(config, workload.pool, progress=ctx.progress()))
            runs.append(run)
            lat = run["latency_us"]
            points.append(
                {
                    "concurrency": level,
                    "throughput_rps": run["throughput_rps"],
                    "p50_us": lat["p50"],
                    "p90_us": lat["p90"],
                    "p99_us": lat["p99"],
                    "errors": run["requests"]["errors"],
                    "client_cores": run["client"]["cpu_cores"],
                }
            )
        peak = max(points, key=lambda p: p["throughput_rps"])
        outcome = Outcome(
            runs,
            workload.description,
            summary={"points": points, "peak": peak},
            warnings=[w for r in runs for w in report.run_warnings(r)],
        )
        outcome.tables.append(report.run_table(runs))
        outcome.tables.append(
            f"peak: {peak['throughput_rps']:,.0f} ok/s at concurrency {peak['concurrency']}"
        )
        path = options.plot_target(args)
        if path is not None:
            outcome.plots.append(str(plots.sweep(points, path, f"sweep on {target}")))
        return outcome
