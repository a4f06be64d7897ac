"""The batcher's choice of batches, driven directly on an event loop with a real ONNX model
(``two_output_model``: ``a`` [-1,3] → ``sum``, ``double``, ``argmax``), run inline.

Requests submitted in one loop iteration are looked at together, so these tests control
exactly what the queue holds when a batch is formed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from gateway.batching import Batcher
from gateway.errors import DeadlineExceeded, ModelLoadError
from gateway.runtime import OnnxModel
from gateway.settings import BatchingSettings, RuntimeOptions
from gateway.stats import VersionStats
from tests import onnx_models

NEVER_US = 60_000_000


def run(test: Callable[[Batcher, VersionStats], Awaitable[None]],
        settings: BatchingSettings) -> None:
    async def main() -> None:
        stats = VersionStats("m", "1")
        batcher = Batcher("m", 1, OnnxModel(onnx_models.two_output_model(), RuntimeOptions()),
                          settings, stats, executor=None)
        await test(batcher, stats)
    asyncio.run(main())


def x(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"a": np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)}


def sizes(stats: VersionStats) -> dict[int, int]:
    return {size: b.compute_infer.count for size, b in stats.batches.items()}


async def settle() -> None:
    """Let the loop run the batcher's scheduled look (call_soon)."""
    for _ in range(3):
        await asyncio.sleep(0)


def test_the_largest_reachable_preferred_size_leaves_at_once() -> None:
    async def test(batcher: Batcher, stats: VersionStats) -> None:
        feeds = [x(1, i) for i in range(3)]
        futures = [batcher.submit(f, ["sum"], f"r{i}", None) for i, f in enumerate(feeds)]
        await settle()
        # 1, 2 (preferred), 3 rows: the 2 leave now, the third waits (delay 60 s).
        assert sizes(stats) == {2: 1}
        assert [f.done() for f in futures] == [True, True, False]
        feeds.append(x(1, 3))
        futures.append(batcher.submit(feeds[3], ["sum"], "r3", None))
        await settle()
        assert sizes(stats) == {2: 2}
        for feed, future in zip(feeds, futures, strict=True):
            _, (got,) = await future
            np.testing.assert_allclose(got, feed["a"] + 1, rtol=1e-6)
    run(test, BatchingSettings(max_batch_size=8, max_queue_delay_us=NEVER_US,
                               preferred_batch_sizes=(2, 4)))


def test_a_batch_the_next_request_cannot_join_leaves_and_close_sends_the_rest() -> None:
    async def test(batcher: Batcher, stats: VersionStats) -> None:
        first = batcher.submit(x(3, 0), ["double"], "three", None)
        second = batcher.submit(x(2, 1), ["double"], "two", None)
        await settle()
        assert sizes(stats) == {3: 1}  # 3 + 2 > 4: the 3 rows could not grow
        assert first.done() and not second.done()
        assert batcher.queued == 1
        batcher.close()
        assert sizes(stats) == {3: 1, 2: 1}
        _, (got,) = await second
        np.testing.assert_allclose(got, x(2, 1)["a"] * 2, rtol=1e-6)
    run(test, BatchingSettings(max_batch_size=4, max_queue_delay_us=NEVER_US))


def test_delay_zero_sends_whatever_is_queued() -> None:
    async def test(batcher: Batcher, stats: VersionStats) -> None:
        futures = [batcher.submit(x(1, i), ["sum", "double", "argmax"], f"r{i}", None)
                   for i in range(3)]
        await settle()
        assert sizes(stats) == {3: 1}
        for i, future in enumerate(futures):
            _, outputs = await future
            assert [o.shape for o in outputs] == [(1, 3), (1, 3), (1,)]
            np.testing.assert_allclose(outputs[0], x(1, i)["a"] + 1, rtol=1e-6)
    run(test, BatchingSettings(max_batch_size=8))


def test_a_request_whose_deadline_passed_in_the_queue_is_not_run() -> None:
    async def test(batcher: Batcher, stats: VersionStats) -> None:
        expired = batcher.submit(x(1, 0), ["sum"], "late", time.monotonic() - 1)
        alive = batcher.submit(x(1, 1), ["sum"], "alive", None)
        await settle()
        with pytest.raises(DeadlineExceeded):
            await expired
        await alive
        assert sizes(stats) == {1: 1}
    run(test, BatchingSettings(max_batch_size=2, max_queue_delay_us=NEVER_US))


def test_a_model_without_a_batch_dim_cannot_batch() -> None:
    async def main() -> None:
        with pytest.raises(ModelLoadError, match=r"input 'x' has shape \[2, 3\]"):
            Batcher("m", 1, OnnxModel(onnx_models.fixed_shape_model(), RuntimeOptions()),
                    BatchingSettings(max_batch_size=4), VersionStats("m", "1"), executor=None)
    asyncio.run(main())
