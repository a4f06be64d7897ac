"""``steady``: one run at a fixed concurrency (closed loop) or rate (open loop).

``--run-at T:COMMAND`` runs a shell-free command at t=T seconds during the run and
marks it on the timeline (e.g. a ``gateway`` CLI call that swaps a version).
"""

from __future__ import annotations

import argparse
import shlex

from loadtests import plots, report
from loadtests.errors import CommandError
from loadtests.events import CommandSchedule
from loadtests.runner import run_load
from loadtests.scenarios import options
from loadtests.scenarios.base import Context, Outcome


def parse_run_at(items: list[str] | None) -> CommandSchedule:
    """``T:COMMAND`` items -> a schedule (COMMAND split like a shell would, not run by one)."""
    schedule = CommandSchedule()
    for item in items or []:
        at, sep, command = item.partition(":")
        try:
            at_s = float(at)
        except ValueError:
            raise CommandError(f"--run-at {item!r}: expected SECONDS:COMMAND") from None
        argv = shlex.split(command)
        if not sep or not argv:
            raise CommandError(f"--run-at {item!r}: expected SECONDS:COMMAND")
        schedule.add(at_s, argv)
    return schedule


class Steady:
    name = "steady"
    help = "one run at fixed concurrency or fixed rate"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        options.add_target_args(parser)
        options.add_workload_args(parser)
        options.add_load_args(parser)
        parser.add_argument(
            "--run-at",
            action="append",
            metavar="SECONDS:COMMAND",
            help="run COMMAND at t=SECONDS of the measurement and mark it as an event (repeatable)",
        )
        options.add_output_args(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> Outcome:
        (target,) = options.targets(args)
        workload = options.build_workload(args, target)
        plan = options.plan_from_args(args)
        label = f"c={plan.concurrency}" if hasattr(plan, "concurrency") else f"rate={args.rate:g}/s"
        config = options.config_from_args(args, target, plan, label)
        result = run_load(
            config, workload.pool, schedule=parse_run_at(args.run_at), progress=ctx.progress()
        )
        run = report.run_report(result)
        outcome = Outcome([run], workload.description, warnings=report.run_warnings(run))
        outcome.tables.append("\n".join([report.run_table([run]), *report.detail_lines(run)]))
        path = options.plot_target(args)
        if path is not None:
            outcome.plots.append(str(plots.timeline([run], path, f"steady {label} on {target}")))
        failed = [c for c in run["commands"] if c["returncode"] != 0]
        outcome.warnings.extend(
            f"command {c['label']!r} ended with {c['returncode']}: {c['output_tail'][-300:]}"
            for c in failed
        )
        return outcome
