"""Marked events on a run's timeline, and commands run at a given time during a run.

A scenario that changes the server mid-run (swap a version, start a retrain) does it
the way an operator would: by running the ``gateway`` CLI as a subprocess at t=X.
``CommandSchedule`` runs such commands and marks an event when each starts and ends,
so plots and the JSON result show when the change happened. Times are seconds on the
run's clock: t=0 is the start of measurement (after warm-up).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests.errors import CommandError


@dataclass(frozen=True)
class Event:
    """Something that happened at ``t_s`` seconds after the start of measurement."""

    t_s: float
    label: str

    def as_dict(self) -> dict[str, object]:
        return {"t_s": round(self.t_s, 6), "label": self.label}


class EventLog:
    """Thread-safe list of events; times are converted to the run's clock once it starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._origin: float | None = None
        self._events: list[Event] = []

    def set_origin(self, measure_start: float) -> None:
        """Set t=0 as a ``time.monotonic()`` instant."""
        with self._lock:
            self._origin = measure_start

    def mark(self, label: str, at: float | None = None) -> Event:
        """Record ``label`` at monotonic instant ``at`` (default: now)."""
        instant = time.monotonic() if at is None else at
        with self._lock:
            origin = instant if self._origin is None else self._origin
            event = Event(instant - origin, label)
            self._events.append(event)
        return event

    def add(self, event: Event) -> None:
        """Record an event already expressed on the run's clock."""
        with self._lock:
            self._events.append(event)

    def events(self) -> list[Event]:
        with self._lock:
            return sorted(self._events, key=lambda e: e.t_s)


@dataclass(frozen=True)
class ScheduledCommand:
    """Run ``argv`` at ``at_s`` seconds on the run's clock, killed after ``timeout_s``."""

    at_s: float
    argv: tuple[str, ...]
    label: str
    timeout_s: float = 60.0


@dataclass(frozen=True)
class CommandOutcome:
    """What a scheduled command did; ``returncode`` is None if it never ran or timed out."""

    label: str
    argv: tuple[str, ...]
    started_s: float | None
    finished_s: float | None
    returncode: int | None
    output_tail: str

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "argv": list(self.argv),
            "started_s": self.started_s,
            "finished_s": self.finished_s,
            "returncode": self.returncode,
            "output_tail": self.output_tail,
        }


class CommandSchedule:
    """Commands to run at fixed times during one run, each on its own thread.

    ``start(measure_start, log)`` arms them; ``stop()`` skips those not started yet;
    ``join(timeout)`` waits for the running ones and returns every outcome.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._commands: list[ScheduledCommand] = []
        self._env = dict(env) if env is not None else None
        self._cancel = threading.Event()
        self._threads: list[threading.Thread] = []
        self._outcomes: list[CommandOutcome] = []
        self._lock = threading.Lock()

    def add(
        self, at_s: float, argv: Sequence[str], label: str | None = None, timeout_s: float = 60.0
    ) -> ScheduledCommand:
        if at_s < 0:
            raise CommandError(f"a command cannot run before t=0 (got at_s={at_s})")
        command = ScheduledCommand(at_s, tuple(argv), label or " ".join(argv), timeout_s)
        self._commands.append(command)
        return command

    @property
    def commands(self) -> list[ScheduledCommand]:
        return list(self._commands)

    def __bool__(self) -> bool:
        return bool(self._commands)

    def start(self, measure_start: float, log: EventLog) -> None:
        for command in self._commands:
            thread = threading.Thread(
                target=self._run,
                args=(command, measure_start, log),
                name=f"cmd:{command.label}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._cancel.set()

    def join(self, timeout_s: float) -> list[CommandOutcome]:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return sorted(self._outcomes, key=lambda o: o.started_s or float("inf"))

    def _record(self, outcome: CommandOutcome) -> None:
        with self._lock:
            self._outcomes.append(outcome)

    def _run(self, command: ScheduledCommand, measure_start: float, log: EventLog) -> None:
        delay = measure_start + command.at_s - time.monotonic()
        if delay > 0 and self._cancel.wait(delay):
            self._record(CommandOutcome(command.label, command.argv, None, None, None, "skipped"))
            return
        if self._cancel.is_set():
            self._record(CommandOutcome(command.label, command.argv, None, None, None, "skipped"))
            return
        started = log.mark(command.label).t_s
        try:
            proc = subprocess.run(
                command.argv,
                capture_output=True,
                text=True,
                timeout=command.timeout_s,
                env=self._env,
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
            finished = log.mark(f"{command.label}: timed out").t_s
            self._record(
                CommandOutcome(command.label, command.argv, started, finished, None, out[-2000:])
            )
            return
        except OSError as exc:
            finished = log.mark(f"{command.label}: failed to start").t_s
            self._record(
                CommandOutcome(command.label, command.argv, started, finished, None, str(exc))
            )
            return
        finished = log.mark(f"{command.label}: done rc={proc.returncode}").t_s
        tail = (proc.stdout + proc.stderr)[-2000:]
        self._record(
            CommandOutcome(command.label, command.argv, started, finished, proc.returncode, tail)
        )


def gateway_argv(*args: str, gateway_bin: str | os.PathLike[str] | None = None) -> list[str]:
    """argv for the ``gateway`` CLI: ``gateway_bin``, else next to this Python, else on PATH.

    Raises CommandError when no ``gateway`` executable can be found.
    """
    if gateway_bin is not None:
        return [os.fspath(gateway_bin), *args]
    beside = Path(sys.executable).with_name("gateway")
    if beside.exists():
        return [str(beside), *args]
    found = shutil.which("gateway")
    if found is None:
        raise CommandError("no `gateway` executable next to this Python or on PATH")
    return [found, *args]
