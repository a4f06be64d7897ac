"""``overload``: an open loop offered above capacity; how the server sheds load.

Capacity is measured first with a short closed-loop run (or taken from ``--rate``,
which is then the offered rate itself). The report says how many requests were shed
with RESOURCE_EXHAUSTED and how fast, whether admitted requests kept a bounded
latency, and how many ran into the per-request deadline (DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import argparse
from typing import Any

from loadtests import plots, report
from loadtests.drivers import Bounds, ClosedLoop, OpenLoop
from loadtests.errors import RunError
from loadtests.runner import RunConfig, run_load
from loadtests.scenarios import options
from loadtests.scenarios.base import Context, Outcome

SHED = "RESOURCE_EXHAUSTED"
TIMEOUT = "DEADLINE_EXCEEDED"


def overload_summary(
    run: dict[str, Any], capacity_rps: float | None, timeout_s: float
) -> dict[str, Any]:
    """The overload verdict from the open-loop RUN report."""
    codes = run["errors_by_code"]
    by_code = run["error_latency_by_code_us"]
    sent = max(run["requests"]["sent"], 1)
    ok_lat = run["latency_us"]
    shed_lat = by_code.get(SHED, {})
    return {
        "capacity_rps": capacity_rps,
        "offered_rps": run["offered_rps"],
        "achieved_rps": run["achieved_rps"],
        "ok_rps": run["throughput_rps"],
        "shed": codes.get(SHED, 0),
        "shed_share": round(codes.get(SHED, 0) / sent, 6),
        "shed_latency_us": {k: shed_lat.get(k) for k in ("p50", "p99", "max")},
        "deadline_exceeded": codes.get(TIMEOUT, 0),
        "other_errors": {c: n for c, n in codes.items() if c not in (SHED, TIMEOUT)},
        "admitted_latency_us": {k: ok_lat[k] for k in ("p50", "p99", "p999", "max")},
        "client_send_lag_p99_us": run["client"]["send_lag_us"]["p99"],
        "admitted_p99_within_timeout": ok_lat["p99"] is not None
        and ok_lat["p99"] <= timeout_s * 1_000_000,
    }


class Overload:
    name = "overload"
    help = "open loop above capacity: shedding, admitted latency, timeouts"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        options.add_target_args(parser)
        options.add_workload_args(parser)
        options.add_load_args(parser, timeout=1.0, concurrency=False)
        group = parser.add_argument_group("overload")
        group.add_argument(
            "--factor",
            type=float,
            default=1.5,
            help="offered rate = factor x measured capacity (default 1.5); ignored with --rate",
        )
        group.add_argument(
            "--capacity-concurrency",
            type=int,
            default=16,
            help="closed-loop concurrency of the capacity probe (default 16)",
        )
        group.add_argument(
            "--capacity-duration",
            type=float,
            default=3.0,
            help="seconds of the capacity probe (default 3)",
        )
        options.add_output_args(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> Outcome:
        (target,) = options.targets(args)
        workload = options.build_workload(args, target)
        runs: list[dict[str, Any]] = []
        capacity: float | None = None
        if args.rate is None:
            probe = RunConfig(
                target=target,
                plan=ClosedLoop(args.capacity_concurrency),
                bounds=Bounds(
                    args.max_requests, args.capacity_duration, min(args.warmup, 1.0), args.grace
                ),
                timeout_s=max(args.timeout, 10.0),
                processes=min(args.processes, args.capacity_concurrency),
                window_s=args.window,
                channels=args.channels,
                uvloop=args.uvloop,
                label="capacity",
            )
            probe_run = report.run_report(run_load(probe, workload.pool, progress=ctx.progress()))
            runs.append(probe_run)
            capacity = probe_run["throughput_rps"]
            if not capacity:
                raise RunError(
                    f"capacity probe got no successful response: {probe_run['errors_by_code']}"
                )
            rate = capacity * args.factor
            ctx.note(f"capacity ≈ {capacity:,.0f}/s; offering {rate:,.0f}/s ({args.factor:g}x)")
        else:
            rate = args.rate
        plan = OpenLoop(rate, args.arrival, args.seed, max_in_flight=args.max_in_flight)
        config = options.config_from_args(args, target, plan, f"offered={rate:,.0f}/s")
        run = report.run_report(run_load(config, workload.pool, progress=ctx.progress()))
        runs.append(run)
        summary = overload_summary(run, capacity, args.timeout)
        outcome = Outcome(
            runs,
            workload.description,
            summary=summary,
            warnings=[w for r in runs for w in report.run_warnings(r)],
        )
        outcome.tables.append(report.run_table(runs))
        outcome.tables.append(
            report.table(
                [
                    "capacity/s",
                    "offered/s",
                    "achieved/s",
                    "ok/s",
                    "shed",
                    "shed %",
                    "shed p50 ms",
                    "shed p99 ms",
                    "deadline exceeded",
                    "admitted p99 ms",
                    "admitted max ms",
                ],
                [
                    [
                        capacity,
                        summary["offered_rps"],
                        summary["achieved_rps"],
                        summary["ok_rps"],
                        summary["shed"],
                        100 * summary["shed_share"],
                        _ms(summary["shed_latency_us"]["p50"]),
                        _ms(summary["shed_latency_us"]["p99"]),
                        summary["deadline_exceeded"],
                        _ms(summary["admitted_latency_us"]["p99"]),
                        _ms(summary["admitted_latency_us"]["max"]),
                    ]
                ],
            )
        )
        outcome.tables.append("\n".join(report.detail_lines(run)))
        path = options.plot_target(args)
        if path is not None:
            outcome.plots.append(str(plots.timeline([run], path, f"overload on {target}")))
        return outcome


def _ms(us: int | None) -> float | None:
    return None if us is None else us / 1000
