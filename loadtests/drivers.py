"""Load drivers: closed loop (fixed concurrency) and open loop (fixed arrival rate).

Both run on one asyncio loop and talk to the server only through ``send(index)``, an
awaitable that sends pooled request ``index`` and returns the version that served it,
or raises ``CallFailed`` with a gRPC status name. That seam keeps the drivers free of
gRPC and lets the statistics be checked against any transport.

Timeline of a run (monotonic clock, shared by all processes of a run)::

    start_at ── warmup_s ──► t=0 (measure start) ── duration_s ──► deadline ── grace_s ──► hard stop

Requests sent before t=0 are warm-up and not recorded. Nothing new is sent at or
after the deadline, nor once ``max_requests`` measured requests were sent; requests
still in flight at the hard stop are cancelled and counted as incomplete. So every
run ends by itself within ``warmup_s + duration_s + grace_s``.

The open loop measures latency from each request's *intended* send time, not from
when it was actually sent: a server (or client) stall delays every request scheduled
during it, and those delays show up as latency instead of disappearing (no
coordinated omission). One allowance: asyncio wakes timers up to ~1 ms late (epoll
has millisecond resolution), so a send that is late by less than ``timer_slack_s``
counts from its actual send time; any lag beyond that is charged in full minus the
slack. The raw send lag is recorded separately (``send_lag``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np

from loadtests.errors import ConfigError
from loadtests.stats import Recorder

Send = Callable[[int], Awaitable[str]]
Clock = Callable[[], float]


class CallFailed(Exception):
    """A request ended with a non-OK gRPC status; ``code`` is its name (e.g. "UNAVAILABLE")."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Bounds:
    """Limits of one run; both ``max_requests`` and ``duration_s`` are always enforced."""

    max_requests: int
    duration_s: float
    warmup_s: float = 0.0
    grace_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_requests < 1:
            raise ConfigError(f"max_requests must be at least 1, got {self.max_requests}")
        if not self.duration_s > 0:
            raise ConfigError(f"duration_s must be positive, got {self.duration_s}")
        if self.warmup_s < 0 or self.grace_s < 0:
            raise ConfigError("warmup_s and grace_s must not be negative")


@dataclass(frozen=True)
class ClosedLoop:
    """``concurrency`` workers, each sending its next request as soon as the last one returns."""

    concurrency: int

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")

    def describe(self) -> dict[str, object]:
        return {"mode": "closed", "concurrency": self.concurrency}


@dataclass(frozen=True)
class OpenLoop:
    """Requests at ``rate`` per second, ``constant`` spacing or ``poisson`` arrivals.

    ``phase_s`` shifts this schedule (processes of one run interleave their constant
    schedules); ``max_in_flight`` caps outstanding requests so a dead server cannot
    exhaust the client; requests held back by the cap still count from their intended
    time. ``timer_slack_s``: see the module docstring.
    """

    rate: float
    arrival: str = "constant"
    seed: int = 0
    phase_s: float = 0.0
    max_in_flight: int = 10_000
    timer_slack_s: float = 0.002

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ConfigError(f"rate must be positive, got {self.rate}")
        if self.arrival not in ("constant", "poisson"):
            raise ConfigError(f"arrival must be constant or poisson, got {self.arrival!r}")
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {self.max_in_flight}")

    def describe(self) -> dict[str, object]:
        return {
            "mode": "open",
            "rate": self.rate,
            "arrival": self.arrival,
            "max_in_flight": self.max_in_flight,
        }

    def offsets(self) -> Iterator[float]:
        """Intended send times in seconds after the run's start, increasing without end."""
        if self.arrival == "constant":
            k = 0
            while True:
                yield self.phase_s + k / self.rate
                k += 1
        rng = np.random.default_rng(self.seed)
        t = self.phase_s
        while True:
            for gap in rng.exponential(1.0 / self.rate, size=1024):
                t += float(gap)
                yield t


Plan = ClosedLoop | OpenLoop


@dataclass(frozen=True)
class DriveOutcome:
    """How a drive ended: measured seconds, "count" or "time", requests cancelled or never sent."""

    elapsed_s: float
    stopped_by: str
    incomplete: int
    not_sent: int


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


async def _until(instant: float, clock: Clock) -> None:
    delay = instant - clock()
    if delay > 0:
        await asyncio.sleep(delay)


async def _finish(
    tasks: set[asyncio.Task[None]], hard_stop: float, clock: Clock, failures: list[BaseException]
) -> None:
    """Wait for ``tasks`` until ``hard_stop`` and cancel the rest; re-raise the first bug.

    ``failures`` collects exceptions of tasks that already finished and left ``tasks``.
    """
    waiting = set(tasks)
    if waiting:
        _, pending = await asyncio.wait(waiting, timeout=max(0.0, hard_stop - clock()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in waiting:
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]
    if failures:
        raise failures[0]


async def run_closed(
    plan: ClosedLoop,
    send: Send,
    pool_size: int,
    recorder: Recorder,
    bounds: Bounds,
    start_at: float,
    *,
    clock: Clock = time.monotonic,
    pool_offset: int = 0,
) -> DriveOutcome:
    """Drive a closed loop from ``start_at`` (a ``clock`` instant) until a bound is hit."""
    measure_start = start_at + bounds.warmup_s
    deadline = measure_start + bounds.duration_s
    counter = {"next": pool_offset, "issued": 0, "in_flight": 0}
    last_done = [measure_start]
    reason = ["time"]

    async def worker() -> None:
        while True:
            t0 = clock()
            if t0 >= deadline:
                return
            measured = t0 >= measure_start
            if measured:
                if counter["issued"] >= bounds.max_requests:
                    reason[0] = "count"
                    return
                counter["issued"] += 1
                counter["in_flight"] += 1
                recorder.record_sent()
            else:
                recorder.warmup += 1
            index = counter["next"] % pool_size
            counter["next"] += 1
            try:
                version = await send(index)
            except CallFailed as failure:
                t1 = clock()
                if measured:
                    recorder.record_error(t1 - measure_start, _us(t1 - t0), failure.code)
            else:
                t1 = clock()
                if measured:
                    recorder.record_ok(t1 - measure_start, _us(t1 - t0), version)
            if measured:
                counter["in_flight"] -= 1
                last_done[0] = max(last_done[0], t1)

    await _until(start_at, clock)
    tasks = {asyncio.create_task(worker()) for _ in range(plan.concurrency)}
    await _finish(tasks, deadline + bounds.grace_s, clock, [])
    end = last_done[0] if reason[0] == "count" else max(last_done[0], deadline)
    return DriveOutcome(end - measure_start, reason[0], counter["in_flight"], 0)


async def run_open(
    plan: OpenLoop,
    send: Send,
    pool_size: int,
    recorder: Recorder,
    bounds: Bounds,
    start_at: float,
    *,
    clock: Clock = time.monotonic,
    pool_offset: int = 0,
) -> DriveOutcome:
    """Drive an open loop from ``start_at``; latency counts from each intended send time."""
    measure_start = start_at + bounds.warmup_s
    deadline = measure_start + bounds.duration_s
    counter = {"in_flight": 0, "measured_in_flight": 0}
    last_done = [measure_start]
    slot_freed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def settled(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    async def one(index: int, intended: float, measured: bool) -> None:
        sent = clock()
        origin = min(sent, intended + plan.timer_slack_s)
        if measured:
            recorder.record_send_lag(_us(sent - intended))
        try:
            version = await send(index)
        except CallFailed as failure:
            t1 = clock()
            if measured:
                recorder.record_error(t1 - measure_start, _us(t1 - origin), failure.code)
        else:
            t1 = clock()
            if measured:
                recorder.record_ok(t1 - measure_start, _us(t1 - origin), version)
        counter["in_flight"] -= 1
        if measured:
            counter["measured_in_flight"] -= 1
            last_done[0] = max(last_done[0], t1)
        slot_freed.set()

    def unsent(first: float, rest: Iterator[float], issued: int) -> int:
        # Requests scheduled before the deadline that the client never got to send.
        count, t = 0, first
        while t < deadline and issued + count < bounds.max_requests:
            if t >= measure_start:
                count += 1
            t = start_at + next(rest)
        return count

    await _until(start_at, clock)
    offsets = plan.offsets()
    issued, reason, not_sent = 0, "time", 0
    for k, offset in enumerate(offsets):
        intended = start_at + offset
        if intended >= deadline:
            break
        measured = intended >= measure_start
        if measured and issued >= bounds.max_requests:
            reason = "count"
            break
        now = clock()
        if intended > now:
            await asyncio.sleep(intended - now)
        elif k % 64 == 63:
            await asyncio.sleep(0)  # behind schedule: let in-flight sends progress
        while counter["in_flight"] >= plan.max_in_flight and clock() < deadline:
            slot_freed.clear()
            try:
                await asyncio.wait_for(slot_freed.wait(), max(0.0, deadline - clock()))
            except TimeoutError:
                break
        if clock() >= deadline:
            not_sent = unsent(intended, offsets, issued)
            break
        if measured:
            issued += 1
            counter["measured_in_flight"] += 1
            recorder.record_sent()
        else:
            recorder.warmup += 1
        counter["in_flight"] += 1
        task = asyncio.create_task(one((pool_offset + k) % pool_size, intended, measured))
        tasks.add(task)
        task.add_done_callback(settled)
    await _finish(tasks, deadline + bounds.grace_s, clock, failures)
    end = last_done[0] if reason == "count" else max(last_done[0], deadline)
    return DriveOutcome(end - measure_start, reason, counter["measured_in_flight"], not_sent)


async def drive(
    plan: Plan,
    send: Send,
    pool_size: int,
    recorder: Recorder,
    bounds: Bounds,
    start_at: float,
    *,
    clock: Clock = time.monotonic,
    pool_offset: int = 0,
) -> DriveOutcome:
    """Run ``plan`` (closed or open loop); see the module docstring for the timeline."""
    if isinstance(plan, ClosedLoop):
        return await run_closed(
            plan, send, pool_size, recorder, bounds, start_at, clock=clock, pool_offset=pool_offset
        )
    return await run_open(
        plan, send, pool_size, recorder, bounds, start_at, clock=clock, pool_offset=pool_offset
    )
