"""``compare``: the same workload against several servers in turn, ratios vs the first.

The request pool is built once (inputs discovered on the first target unless given),
so every server receives byte-identical requests.
"""

from __future__ import annotations

import argparse
from typing import Any

from loadtests import plots, report
from loadtests.errors import ConfigError
from loadtests.runner import run_load
from loadtests.scenarios import options
from loadtests.scenarios.base import Context, Outcome


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 3)


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target: throughput and latency percentiles, each also as a ratio to the first run."""
    ref = runs[0]
    out = []
    for run in runs:
        row: dict[str, Any] = {
            "target": run["target"],
            "throughput_rps": run["throughput_rps"],
            "errors": run["requests"]["errors"],
        }
        row["throughput_ratio"] = _ratio(run["throughput_rps"], ref["throughput_rps"])
        for key in ("p50", "p90", "p99", "max"):
            row[f"{key}_us"] = run["latency_us"][key]
            row[f"{key}_ratio"] = _ratio(run["latency_us"][key], ref["latency_us"][key])
        out.append(row)
    return out


class Compare:
    name = "compare"
    help = "the same workload against several targets in turn, with ratios"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        options.add_target_args(parser, multiple=True)
        options.add_workload_args(parser)
        options.add_load_args(parser)
        options.add_output_args(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> Outcome:
        targets = options.targets(args)
        if len(targets) < 2:
            raise ConfigError("compare needs at least two --target options")
        workload = options.build_workload(args, targets[0])
        plan = options.plan_from_args(args)
        runs = []
        for i, target in enumerate(targets):
            config = options.config_from_args(args, target, plan, f"#{i + 1} {target}")
            ctx.note(f"compare: {config.label}")
            runs.append(report.run_report(run_load(config, workload.pool, progress=ctx.progress())))
        rows = ratios(runs)
        outcome = Outcome(
            runs,
            workload.description,
            summary={"targets": rows},
            warnings=[w for r in runs for w in report.run_warnings(r)],
        )
        outcome.tables.append(report.run_table(runs))
        outcome.tables.append(
            report.table(
                ["target", "ok/s", "x ok/s", "p50 ms", "x p50", "p99 ms", "x p99", "errors"],
                [
                    [
                        r["target"],
                        r["throughput_rps"],
                        r["throughput_ratio"],
                        None if r["p50_us"] is None else r["p50_us"] / 1000,
                        r["p50_ratio"],
                        None if r["p99_us"] is None else r["p99_us"] / 1000,
                        r["p99_ratio"],
                        r["errors"],
                    ]
                    for r in rows
                ],
            )
        )
        path = options.plot_target(args)
        if path is not None:
            outcome.plots.append(str(plots.timeline(runs, path, "compare")))
        return outcome
