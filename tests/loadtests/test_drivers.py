"""Drivers against a scripted transport (the ``send`` seam): bounds and coordinated omission."""

from __future__ import annotations

import asyncio
import time

import pytest

from loadtests.drivers import Bounds, CallFailed, ClosedLoop, OpenLoop, drive
from loadtests.errors import ConfigError
from loadtests.stats import Recorder, latency_summary


class StallingTransport:
    """Answers after ``service_s``; anything sent during [stall_from, stall_until) waits until
    ``stall_until`` (times relative to ``origin``, set when the run starts)."""

    def __init__(self, service_s: float, stall_from: float, stall_until: float) -> None:
        self.service_s = service_s
        self.stall_from = stall_from
        self.stall_until = stall_until
        self.origin = 0.0

    async def __call__(self, index: int) -> str:
        t = time.monotonic() - self.origin
        wait = self.service_s
        if self.stall_from <= t < self.stall_until:
            wait += self.stall_until - t
        await asyncio.sleep(wait)
        return "1"


def _run(plan, send, bounds: Bounds, recorder: Recorder, origin_hook=None):
    async def go():
        start = time.monotonic() + 0.01
        if origin_hook is not None:
            origin_hook(start + bounds.warmup_s)
        return await drive(plan, send, 16, recorder, bounds, start)

    return asyncio.run(go())


def _count_at_least(rec: Recorder, threshold_us: int) -> int:
    return sum(
        int(item.count_at_value_iterated_to)
        for item in rec.ok.get_recorded_iterator()
        if item.value_iterated_to >= threshold_us
    )


def test_open_loop_charges_a_stall_to_every_request_scheduled_during_it() -> None:
    transport = StallingTransport(service_s=0.001, stall_from=0.2, stall_until=0.5)
    rec = Recorder()
    outcome = _run(
        OpenLoop(rate=200),
        transport,
        Bounds(max_requests=10_000, duration_s=0.7, grace_s=1.0),
        rec,
        origin_hook=lambda t0: setattr(transport, "origin", t0),
    )
    assert outcome.stopped_by == "time"
    assert rec.ok.get_total_count() == 140
    # 60 requests were scheduled in the 300 ms stall; the one at its start waited ~300 ms,
    # and each later one a little less: ~40 of them waited 100 ms or more.
    assert 30 <= _count_at_least(rec, 100_000) <= 45
    assert 250_000 <= rec.ok.get_max_value() <= 400_000
    summary = latency_summary(rec.ok)
    assert summary["p90"] >= 100_000  # the stall dominates the tail, as users would feel it
    assert summary["p50"] < 50_000  # and the rest of the run stays fast


def test_closed_loop_hides_the_same_stall_which_is_why_the_open_loop_exists() -> None:
    transport = StallingTransport(service_s=0.005, stall_from=0.2, stall_until=0.5)
    rec = Recorder()
    _run(
        ClosedLoop(1),
        transport,
        Bounds(max_requests=10_000, duration_s=0.7, grace_s=1.0),
        rec,
        origin_hook=lambda t0: setattr(transport, "origin", t0),
    )
    assert _count_at_least(rec, 100_000) == 1  # one slow request, the rest were never sent


def test_closed_loop_stops_at_the_request_count() -> None:
    async def instant(index: int) -> str:
        await asyncio.sleep(0)
        return "7"

    rec = Recorder()
    outcome = _run(ClosedLoop(4), instant, Bounds(max_requests=500, duration_s=30.0), rec)
    assert outcome.stopped_by == "count"
    assert rec.sent == 500
    assert rec.ok.get_total_count() == 500
    assert outcome.elapsed_s < 5


def test_open_loop_stops_at_the_request_count() -> None:
    async def fast(index: int) -> str:
        await asyncio.sleep(0.001)
        return "1"

    rec = Recorder()
    outcome = _run(OpenLoop(rate=2000), fast, Bounds(max_requests=300, duration_s=30.0), rec)
    assert outcome.stopped_by == "count"
    assert rec.sent == 300 and rec.ok.get_total_count() == 300
    assert outcome.elapsed_s < 2


def test_a_hung_server_cannot_hold_the_run_past_its_hard_stop() -> None:
    never = asyncio.Event  # each call waits on a fresh event nobody sets

    async def hang(index: int) -> str:
        await never().wait()
        return "1"

    rec = Recorder()
    t0 = time.monotonic()
    outcome = _run(ClosedLoop(3), hang, Bounds(max_requests=100, duration_s=0.2, grace_s=0.2), rec)
    took = time.monotonic() - t0
    assert 0.35 <= took < 2.0
    assert outcome.incomplete == 3
    assert rec.sent == 3 and rec.ok.get_total_count() == 0


def test_open_loop_in_flight_cap_counts_what_it_could_not_send() -> None:
    async def hang(index: int) -> str:
        await asyncio.Event().wait()
        return "1"

    rec = Recorder()
    outcome = _run(
        OpenLoop(rate=100, max_in_flight=5),
        hang,
        Bounds(max_requests=1000, duration_s=0.5, grace_s=0.1),
        rec,
    )
    assert rec.sent == 5
    assert outcome.incomplete == 5
    assert 40 <= outcome.not_sent <= 46  # ~50 scheduled in 0.5 s, 5 of them sent


def test_errors_are_recorded_by_status_and_warmup_is_not_recorded() -> None:
    async def shed_odd(index: int) -> str:
        await asyncio.sleep(0.0005)
        if index % 2:
            raise CallFailed("RESOURCE_EXHAUSTED")
        return "1"

    rec = Recorder()
    _run(ClosedLoop(2), shed_odd, Bounds(max_requests=200, duration_s=10.0, warmup_s=0.1), rec)
    assert rec.warmup > 0
    assert rec.sent == 200
    assert rec.ok.get_total_count() + rec.errors["RESOURCE_EXHAUSTED"].get_total_count() == 200
    assert rec.errors["RESOURCE_EXHAUSTED"].get_total_count() >= 90


def test_a_bug_in_the_transport_is_raised_not_swallowed() -> None:
    async def broken(index: int) -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        _run(OpenLoop(rate=100), broken, Bounds(max_requests=10, duration_s=1.0), Recorder())


def test_poisson_arrivals_have_the_requested_mean_rate() -> None:
    offsets = OpenLoop(rate=1000, arrival="poisson", seed=1).offsets()
    times = [next(offsets) for _ in range(20_000)]
    assert times[-1] == pytest.approx(20.0, rel=0.03)
    assert times == sorted(times)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Bounds(max_requests=0, duration_s=1),
        lambda: Bounds(max_requests=1, duration_s=0),
        lambda: ClosedLoop(0),
        lambda: OpenLoop(rate=0),
        lambda: OpenLoop(rate=1, arrival="bursty"),
    ],
)
def test_unbounded_or_invalid_settings_are_refused(make) -> None:
    with pytest.raises(ConfigError):
        make()
