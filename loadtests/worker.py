"""One load-generating process: its channels, its share of the load, its CPU use.

``run_worker`` is used in-process for one-process runs; ``process_main`` is the
entry point of each spawned process in multi-process runs, speaking a small protocol
over a pipe: it sends ``("ready", None)`` once connected, waits for
``("start", start_at)`` (or ``("abort", None)``), and answers ``("done", snapshot)``
or ``("error", message)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

import grpc

from loadtests import wire
from loadtests.drivers import Bounds, CallFailed, Plan, drive
from loadtests.errors import RunError
from loadtests.stats import PROGRESS_SLOTS, Recorder, Snapshot
from loadtests.workload import RequestPool

StartGate = Callable[[], float]


@dataclass(frozen=True)
class WorkerSpec:
    """One process's share of a run (picklable)."""

    index: int
    target: str
    plan: Plan
    bounds: Bounds
    timeout_s: float
    window_s: float = 1.0
    channels: int = 1
    uvloop: bool = False
    connect_timeout_s: float = 10.0


def run_worker(
    spec: WorkerSpec,
    pool: RequestPool,
    gate: StartGate,
    progress: MutableSequence[int] | None = None,
) -> Snapshot:
    """Connect, call ``gate()`` (blocking; returns the monotonic start instant), drive, report."""
    if spec.uvloop:
        import uvloop

        return uvloop.run(_run(spec, pool, gate, progress))
    return asyncio.run(_run(spec, pool, gate, progress))


async def _run(
    spec: WorkerSpec,
    pool: RequestPool,
    gate: StartGate,
    progress: MutableSequence[int] | None,
) -> Snapshot:
    channels = [
        grpc.aio.insecure_channel(spec.target, options=wire.CHANNEL_OPTIONS)
        for _ in range(max(1, spec.channels))
    ]
    try:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.channel_ready() for c in channels)), spec.connect_timeout_s
            )
        except TimeoutError:
            raise RunError(
                f"cannot connect to {spec.target} within {spec.connect_timeout_s:.0f}s"
            ) from None
        calls = [wire.infer_method(c) for c in channels]
        payloads, headers, timeout = pool.payloads, pool.metadata, spec.timeout_s
        n_calls = len(calls)

        async def send(index: int) -> str:
            try:
                return await calls[index % n_calls](  # type: ignore[no-any-return]
                    payloads[index], timeout=timeout, metadata=headers[index]
                )
            except grpc.aio.AioRpcError as exc:
                raise CallFailed(exc.code().name) from None

        recorder = Recorder(spec.window_s, progress, spec.index * PROGRESS_SLOTS)
        start_at = await asyncio.get_running_loop().run_in_executor(None, gate)
        cpu0, wall0 = time.process_time(), time.monotonic()
        outcome = await drive(
            spec.plan,
            send,
            len(pool),
            recorder,
            spec.bounds,
            start_at,
            pool_offset=spec.index * 7919,  # processes start at different pool entries
        )
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        return recorder.snapshot(
            elapsed_s=outcome.elapsed_s,
            stopped_by=outcome.stopped_by,
            incomplete=outcome.incomplete,
            not_sent=outcome.not_sent,
            cpu_s=cpu,
            wall_s=wall,
        )
    finally:
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


def process_main(
    spec: WorkerSpec, pool: RequestPool, conn: Connection, progress: MutableSequence[int]
) -> None:
    """Entry point of a spawned worker process (see the module docstring for the protocol)."""

    def gate() -> float:
        conn.send(("ready", None))
        kind, value = conn.recv()
        if kind != "start":
            raise RunError("run aborted by the parent")
        return float(value)

    try:
        snapshot = run_worker(spec, pool, gate, progress)
    except BaseException as exc:  # reported to the parent, which raises RunError
        conn.send(("error", f"worker {spec.index}: {type(exc).__name__}: {exc}"))
    else:
        conn.send(("done", snapshot.to_wire()))
    finally:
        conn.close()
