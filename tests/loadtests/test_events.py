"""Commands at a given time during a run, and their marked events."""

from __future__ import annotations

import sys
import time

from loadtests.events import CommandSchedule, EventLog, gateway_argv


def test_command_runs_at_its_time_and_marks_start_and_end() -> None:
    log = EventLog()
    schedule = CommandSchedule()
    schedule.add(0.1, [sys.executable, "-c", "print('swapped')"], label="swap to v2")
    origin = time.monotonic()
    log.set_origin(origin)
    schedule.start(origin, log)
    outcomes = schedule.join(30.0)
    assert [o.returncode for o in outcomes] == [0]
    assert "swapped" in outcomes[0].output_tail
    events = log.events()
    assert [e.label for e in events] == ["swap to v2", "swap to v2: done rc=0"]
    assert 0.1 <= events[0].t_s < 0.5
    assert events[1].t_s >= events[0].t_s


def test_commands_not_yet_started_are_skipped_when_the_run_ends() -> None:
    log = EventLog()
    schedule = CommandSchedule()
    schedule.add(60.0, [sys.executable, "-c", "pass"], label="late")
    schedule.start(time.monotonic(), log)
    schedule.stop()
    outcomes = schedule.join(5.0)
    assert outcomes[0].returncode is None and outcomes[0].output_tail == "skipped"
    assert log.events() == []


def test_failing_command_is_reported_with_its_status() -> None:
    log = EventLog()
    schedule = CommandSchedule()
    schedule.add(0.0, [sys.executable, "-c", "import sys; sys.exit(3)"], label="bad")
    schedule.start(time.monotonic(), log)
    assert schedule.join(30.0)[0].returncode == 3
    assert log.events()[-1].label == "bad: done rc=3"


def test_gateway_argv_uses_the_given_binary() -> None:
    assert gateway_argv("models", "list", gateway_bin="/x/gateway") == [
        "/x/gateway",
        "models",
        "list",
    ]
