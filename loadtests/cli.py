"""``python -m loadtests SCENARIO [options]``: the harness's command line.

Every scenario prints a table to stdout, a live progress line to stderr, and on
request writes the JSON result (``--output``) and a PNG plot (``--plot``). Exit
status: 0 done, 2 a usage or run error (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from loadtests import report
from loadtests.errors import LoadtestError
from loadtests.scenarios import ScenarioRegistry, builtin_registry
from loadtests.scenarios.base import Context

EPILOG = """\
examples:
  python -m loadtests steady --model logreg --concurrency 8 --duration 10 --output out.json
  python -m loadtests steady --model logreg --rate 2000 --arrival poisson --processes 2
  python -m loadtests sweep --model logreg --levels 1,2,4,8,16,32,64 --output sweep.json
  python -m loadtests overload --model logreg --timeout 0.5 --output overload.json
  python -m loadtests compare --model logreg --target 127.0.0.1:8001 --target 127.0.0.1:8081

Every run stops by itself: after --max-requests measured requests or --duration
seconds, whichever comes first. Only loopback targets are loaded unless --allow-remote.
"""


def build_parser(registry: ScenarioRegistry) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests",
        description="Load-test any Open Inference Protocol (KServe V2) gRPC server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="scenario", metavar="SCENARIO", required=True)
    for scenario in registry:
        child = sub.add_parser(
            scenario.name,
            help=scenario.help,
            description=_description(scenario),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        scenario.add_arguments(child)
    return parser


def _description(scenario: object) -> str:
    doc = sys.modules[type(scenario).__module__].__doc__ or ""
    return doc.strip() or str(getattr(scenario, "help", ""))


EXIT_CHECK_FAILED = 1


def hide_urls(argv: Sequence[str]) -> list[str]:
    """``argv`` with a ``--database-url`` value replaced by ``URL`` (it carries a password)."""
    shown, hide = [], False
    for arg in argv:
        shown.append("URL" if hide else
                     ("--database-url=URL" if arg.startswith("--database-url=") else arg))
        hide = arg == "--database-url"
    return shown


def main(
    argv: Sequence[str] | None = None,
    *,
    registry: ScenarioRegistry | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    registry = registry if registry is not None else builtin_registry()
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = build_parser(registry).parse_args(argv)
    ctx = Context(stdout=out, stderr=err, show_progress=not args.no_progress)
    try:
        outcome = registry.get(args.scenario).run(args, ctx)
    except LoadtestError as exc:
        print(f"loadtests: error: {exc}", file=err)
        return 2
    for text in outcome.tables:
        print(text, file=out)
        print(file=out)
    for warning in outcome.warnings:
        print(f"warning: {warning}", file=err)
    if args.output is not None:
        doc = report.document(
            args.scenario,
            outcome.runs,
            workload=outcome.workload,
            summary=outcome.summary,
            warnings=outcome.warnings,
            plots=outcome.plots,
            argv=["python", "-m", "loadtests",
                  *hide_urls(argv if argv is not None else sys.argv[1:])],
        )
        print(f"results: {report.write_json(args.output, doc)}", file=out)
    for path in outcome.plots:
        print(f"plot: {path}", file=out)
    if outcome.summary.get("passed") is False:
        print(f"loadtests: {args.scenario}: its check failed (see the warnings above)", file=err)
        return EXIT_CHECK_FAILED
    return 0
