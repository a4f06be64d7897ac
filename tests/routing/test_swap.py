"""Replacing a routing table while other threads route: old or new, never a mix."""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter

from gateway.routing import Router, RoutingTable, build_table
from lifecycle.traffic import Policy

HANDLES = {v: f"handle-{v}" for v in range(1, 6)}


def table(policy: Policy) -> RoutingTable[str]:
    return build_table("fraud", policy, production=1, handles=HANDLES)


def test_a_swap_under_concurrent_readers_never_mixes_tables() -> None:
    old = table(Policy.split({3: 50, 4: 50}, sticky=True, experiment_id="exp-old"))
    new = table(Policy.split({2: 50, 5: 50}, shadows=(), experiment_id="exp-new"))
    final = table(Policy.split({2: 0, 5: 100}, experiment_id="exp-final"))
    allowed = {"exp-old": {3, 4}, "exp-new": {2, 5}, "exp-final": {5}}
    router: Router[str] = Router()
    router.install(old)
    swapped = threading.Event()
    stop = threading.Event()
    failures: list[str] = []
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    routed = itertools.count(1)
    target = [0]
    reached = threading.Event()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        local: Counter[str] = Counter()
        n = 0
        while not stop.is_set():
            route = router.route("fraud", routing_key=f"user-{n % 97}", rng=rng)
            n += 1
            if next(routed) >= target[0]:
                reached.set()
            local[route.experiment_id] += 1
            if route.version not in allowed.get(route.experiment_id, set()) or (
                route.handle != f"handle-{route.version}"
            ):
                failures.append(f"{route.experiment_id} -> {route.version}")
        # Once the final install has returned, no older route may be handed out.
        for _ in range(500):
            route = router.route("fraud", rng=rng)
            if route.experiment_id != "exp-final" or route.version != 5:
                failures.append(f"stale after the swap: {route}")
        with lock:
            seen.update(local)

    def swapper() -> None:
        for i in range(400):
            router.install(new if i % 2 == 0 else old)
            # Let the readers route with this table before the next swap.
            target[0] = next(routed) + 20
            reached.clear()
            assert reached.wait(timeout=30)
        assert router.install(final) is not None
        swapped.set()

    readers = [threading.Thread(target=reader, args=(seed,)) for seed in range(3)]
    for thread in readers:
        thread.start()
    writer = threading.Thread(target=swapper)
    writer.start()
    writer.join(timeout=60)
    assert swapped.wait(timeout=60)
    stop.set()
    for thread in readers:
        thread.join(timeout=60)
    assert failures == []
    assert seen["exp-old"] > 1000 and seen["exp-new"] > 1000


def test_install_returns_the_replaced_table_and_remove_forgets_the_model() -> None:
    router: Router[str] = Router()
    first = table(Policy.split({3: 1}))
    second = table(Policy.split({4: 1}))
    assert router.install(first) is None
    assert router.install(second) is first
    assert router.table("fraud") is second
    assert dict(router.tables()) == {"fraud": second}
    assert router.remove("fraud") is second
    assert router.table("fraud") is None
