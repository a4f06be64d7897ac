"""Run one load test: split it across processes, start them together, merge results.

``run_load`` is the one entry point scenarios use. With ``processes == 1`` the load
runs on an event loop in this process; otherwise each share runs in a ``spawn``ed
process (``worker.process_main``). All processes connect first, then receive one
common start instant on the shared monotonic clock, so their windows line up and
their snapshots merge exactly.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait

from loadtests.drivers import Bounds, ClosedLoop, OpenLoop, Plan
from loadtests.errors import ConfigError, RunError
from loadtests.events import CommandOutcome, CommandSchedule, Event, EventLog
from loadtests.stats import PROGRESS_SLOTS, Snapshot, merge
from loadtests.worker import WorkerSpec, process_main, run_worker
from loadtests.workload import RequestPool

# Time from "everyone connected" to the common start: covers handing the start
# instant to every process.
_START_MARGIN_S = 0.2
_SPAWN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RunConfig:
    """Everything that shapes one run against one target.

    ``timeout_s`` is the per-request gRPC deadline; ``channels`` the gRPC channels per
    process; ``uvloop`` runs the client on uvloop (cheaper per request).
    """

    target: str
    plan: Plan
    bounds: Bounds
    timeout_s: float = 10.0
    processes: int = 1
    window_s: float = 1.0
    channels: int = 1
    uvloop: bool = False
    label: str = "run"

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ConfigError(f"processes must be at least 1, got {self.processes}")
        if isinstance(self.plan, ClosedLoop) and self.plan.concurrency < self.processes:
            raise ConfigError(
                f"concurrency {self.plan.concurrency} is below --processes {self.processes}"
            )
        if self.bounds.max_requests < self.processes:
            raise ConfigError(f"max_requests is below --processes {self.processes}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout_s}")


@dataclass
class RunResult:
    """A finished run: merged statistics plus what happened around it."""

    config: RunConfig
    snapshot: Snapshot
    events: list[Event] = field(default_factory=list)
    commands: list[CommandOutcome] = field(default_factory=list)
    wall_s: float = 0.0


class ProgressSink:
    """Receives live counters; ``begin`` gets a shared array read while the run goes on."""

    def begin(
        self, counters: Sequence[int], processes: int, measure_start: float, config: RunConfig
    ) -> None: ...

    def end(self) -> None: ...


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def split(config: RunConfig) -> list[WorkerSpec]:
    """Divide concurrency, rate and request count evenly between processes.

    Constant-rate schedules are phase-shifted so the processes' requests interleave at
    the total rate; Poisson processes get distinct seeds (their sum is Poisson again).
    """
    n = config.processes
    specs = []
    for i in range(n):
        plan: Plan
        if isinstance(config.plan, ClosedLoop):
            plan = ClosedLoop(_share(config.plan.concurrency, n, i))
        else:
            plan = replace(
                config.plan,
                rate=config.plan.rate / n,
                seed=config.plan.seed + i,
                phase_s=config.plan.phase_s + i / config.plan.rate,
                max_in_flight=max(1, _share(config.plan.max_in_flight, n, i)),
            )
        bounds = replace(config.bounds, max_requests=_share(config.bounds.max_requests, n, i))
        specs.append(
            WorkerSpec(
                index=i,
                target=config.target,
                plan=plan,
                bounds=bounds,
                timeout_s=config.timeout_s,
                window_s=config.window_s,
                channels=config.channels,
                uvloop=config.uvloop,
            )
        )
    return specs


def run_load(
    config: RunConfig,
    pool: RequestPool,
    *,
    schedule: CommandSchedule | None = None,
    progress: ProgressSink | None = None,
    events: EventLog | None = None,
) -> RunResult:
    """Run ``config`` with requests from ``pool``; blocks until the run has ended.

    ``schedule`` commands start on the run's clock; ``events`` (optional, shared with
    the caller) collects their marks. Raises RunError if a worker cannot connect or
    fails, or if the run overruns its bounds by more than a margin.
    """
    log = events if events is not None else EventLog()
    started = time.monotonic()
    specs = split(config)

    def on_start(start_at: float, counters: Sequence[int]) -> None:
        measure_start = start_at + config.bounds.warmup_s
        log.set_origin(measure_start)
        if schedule:
            schedule.start(measure_start, log)
        if progress is not None:
            progress.begin(counters, config.processes, measure_start, config)

    try:
        if config.processes == 1:
            snapshot = _run_inline(specs[0], pool, on_start)
        else:
            snapshot = run_spawned(specs, pool, config.bounds, on_start)
    finally:
        if progress is not None:
            progress.end()
        commands: list[CommandOutcome] = []
        if schedule:
            schedule.stop()
            commands = schedule.join(max(c.timeout_s for c in schedule.commands) + 5.0)
    return RunResult(config, snapshot, log.events(), commands, time.monotonic() - started)


def _run_inline(
    spec: WorkerSpec, pool: RequestPool, on_start: Callable[[float, Sequence[int]], None]
) -> Snapshot:
    counters: MutableSequence[int] = [0] * PROGRESS_SLOTS

    def gate() -> float:
        start_at = time.monotonic() + 0.05
        on_start(start_at, counters)
        return start_at

    return run_worker(spec, pool, gate, counters)


def _receive(conns: Sequence[Connection], deadline: float, expect: str) -> dict[int, object]:
    """One message of kind ``expect`` from every connection before ``deadline``."""
    got: dict[int, object] = {}
    index = {id(c): i for i, c in enumerate(conns)}
    while len(got) < len(conns):
        waiting = [c for i, c in enumerate(conns) if i not in got]
        ready = wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise RunError(f"{len(waiting)} worker process(es) did not report {expect!r} in time")
        for conn in ready:
            assert isinstance(conn, Connection)
            try:
                kind, value = conn.recv()
            except EOFError:
                raise RunError("a worker process exited without reporting") from None
            if kind == "error":
                raise RunError(str(value))
            got[index[id(conn)]] = value
    return got


def run_spawned(
    specs: Sequence[WorkerSpec],
    pool: RequestPool,
    bounds: Bounds,
    on_start: Callable[[float, Sequence[int]], None],
) -> Snapshot:
    ctx = multiprocessing.get_context("spawn")
    counters = ctx.Array("q", len(specs) * PROGRESS_SLOTS, lock=False)
    procs, conns = [], []
    try:
        for spec in specs:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=process_main,
                args=(spec, pool, child_end, counters),
                name=f"loadtests-worker-{spec.index}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            procs.append(proc)
            conns.append(parent_end)
        _receive(conns, time.monotonic() + _SPAWN_TIMEOUT_S, "ready")
        start_at = time.monotonic() + _START_MARGIN_S
        for conn in conns:
            conn.send(("start", start_at))
        on_start(start_at, counters)  # type: ignore[arg-type]
        hard_stop = start_at + bounds.warmup_s + bounds.duration_s + bounds.grace_s + 15.0
        results = _receive(conns, hard_stop, "done")
        return merge([Snapshot.from_wire(results[i]) for i in range(len(specs))])  # type: ignore[arg-type]
    except BaseException:
        for conn in conns:
            with contextlib.suppress(OSError):  # that worker is already gone
                conn.send(("abort", None))
        raise
    finally:
        for proc in procs:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
        for conn in conns:
            conn.close()


def describe_plan(plan: Plan) -> dict[str, object]:
    return plan.describe()


def offered_rate(plan: Plan) -> float | None:
    return plan.rate if isinstance(plan, OpenLoop) else None
