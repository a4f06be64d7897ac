"""What a scenario is, and what it hands back to the CLI."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from loadtests.progress import ProgressLine, Silent
from loadtests.runner import ProgressSink


@dataclass
class Outcome:
    """A scenario's results: RUN reports, a scenario-specific summary, what to print.

    ``workload`` describes the requests (see ``report.document``); ``tables`` are
    printed to stdout in order; ``plots`` are paths of written PNG files.
    """

    runs: list[dict[str, Any]]
    workload: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What the CLI gives a scenario: output streams and the progress display."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    show_progress: bool = True

    def progress(self) -> ProgressSink:
        return ProgressLine(self.stderr) if self.show_progress else Silent()

    def note(self, message: str) -> None:
        """A human-readable line on stderr (phase changes, measured capacity, ...)."""
        print(message, file=self.stderr, flush=True)


class Scenario(Protocol):
    """One ``python -m loadtests NAME`` subcommand.

    ``add_arguments`` declares its options (usually through ``options.add_*``);
    ``run`` carries the scenario out and raises LoadtestError subclasses for anything
    the user can fix.
    """

    name: str
    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, ctx: Context) -> Outcome: ...
