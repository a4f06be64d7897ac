"""Resolving requests against a routing table: split, sticky keys, pins, shadows."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import gateway
from gateway.errors import InvalidInput, NotReady, VersionNotFound
from gateway.routing import (
    PINNED_ARM,
    PRODUCTION_ARM,
    RoutingTable,
    build_table,
    extract_routing_key,
    key_digest,
    resolve,
    unit,
)
from lifecycle.traffic import Policy, Shadow

ROOT = Path(gateway.__file__).resolve().parent.parent
HANDLES = {v: f"handle-{v}" for v in range(1, 6)}


def table(policy: Policy | None, *, production: int | None = 1,
          explicit: tuple[int, ...] = ()) -> RoutingTable[str]:
    return build_table("fraud", policy, production=production, handles=HANDLES,
                       explicit=explicit)


def test_without_a_policy_everything_goes_to_production() -> None:
    t = table(None)
    rng = random.Random(1)
    routes = {resolve(t, rng=rng) for _ in range(100)}
    assert len(routes) == 1  # the precomputed route itself, no allocation per request
    (route,) = routes
    assert (route.version, route.label, route.handle) == (1, "1", "handle-1")
    assert route.parameters() == {"routing_arm": PRODUCTION_ARM, "experiment_id": ""}
    assert route.shadows == () and route.routing_key_hash == ""


def test_a_90_10_split_lands_within_one_point_over_20000_requests() -> None:
    policy = Policy.split({3: 90, 4: 10})
    t = table(policy)
    rng = random.Random(20260511)
    seen = Counter(resolve(t, rng=rng).version for _ in range(20_000))
    assert set(seen) == {3, 4}
    assert abs(seen[3] / 20_000 - 0.90) <= 0.01
    assert abs(seen[4] / 20_000 - 0.10) <= 0.01
    route = resolve(t, rng=rng)
    assert route.experiment_id == policy.experiment_id
    assert route.arm == str(route.version)


def test_a_three_way_split_with_unnormalised_weights() -> None:
    t = table(Policy.split({2: 1, 3: 1, 4: 2}))
    rng = random.Random(7)
    seen = Counter(resolve(t, rng=rng).version for _ in range(20_000))
    for version, share in ((2, 0.25), (3, 0.25), (4, 0.5)):
        assert abs(seen[version] / 20_000 - share) <= 0.01
    assert t.weights == {2: 0.25, 3: 0.25, 4: 0.5}


def test_sticky_keys_are_fully_consistent_and_survive_a_rebuilt_table() -> None:
    policy = Policy.split({3: 50, 4: 50}, sticky=True, experiment_id="exp-sticky")
    first, rebuilt = table(policy), table(Policy.from_json(policy.to_json()))
    rng = random.Random(3)
    keys = [f"user-{i}" for i in range(1000)]
    assigned = {k: resolve(first, routing_key=k, rng=rng).version for k in keys}
    for _ in range(3):
        for key in keys:
            assert resolve(first, routing_key=key, rng=rng).version == assigned[key]
            assert resolve(rebuilt, routing_key=key, rng=rng).version == assigned[key]
    # Both arms get keys, in about the policy's share.
    share = Counter(assigned.values())[3] / len(keys)
    assert 0.45 <= share <= 0.55
    route = resolve(first, routing_key="user-1", rng=rng)
    assert route.routing_key_hash == key_digest("user-1", "exp-sticky").hex()
    assert len(route.routing_key_hash) == 16


def test_the_key_hash_is_the_same_in_another_process() -> None:
    keys = ["user-1", "user-2", "ключ-3", ""]
    code = (
        "import sys\n"
        "from gateway.routing import key_digest, unit\n"
        "for key in sys.argv[1:]:\n"
        "    d = key_digest(key, 'exp-xproc')\n"
        "    print(d.hex(), repr(unit(d)))\n"
    )
    # A different PYTHONHASHSEED proves Python's salted hash plays no part.
    out = subprocess.run(
        [sys.executable, "-c", code, *keys], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=ROOT, timeout=60,
    ).stdout.splitlines()
    for key, line in zip(keys, out, strict=True):
        digest = key_digest(key, "exp-xproc")
        assert line == f"{digest.hex()} {unit(digest)!r}"


def test_a_new_experiment_reshuffles_the_keys() -> None:
    old = table(Policy.split({3: 50, 4: 50}, sticky=True, experiment_id="exp-a"))
    new = table(Policy.split({3: 50, 4: 50}, sticky=True, experiment_id="exp-b"))
    rng = random.Random(0)
    keys = [f"user-{i}" for i in range(1000)]
    moved = sum(resolve(old, routing_key=k, rng=rng).version
                != resolve(new, routing_key=k, rng=rng).version for k in keys)
    # Independent hashes: about half of the keys change arm.
    assert 400 <= moved <= 600


def test_a_non_sticky_policy_still_records_the_key_hash_but_draws_at_random() -> None:
    t = table(Policy.split({3: 50, 4: 50}, experiment_id="exp-loose"))
    rng = random.Random(5)
    versions = {resolve(t, routing_key="same-user", rng=rng).version for _ in range(200)}
    assert versions == {3, 4}
    assert resolve(t, routing_key="same-user", rng=rng).routing_key_hash == key_digest(
        "same-user", "exp-loose").hex()


def test_a_pin_is_honoured_within_the_serving_set_only() -> None:
    policy = Policy.split({3: 100, 4: 0}, shadows=[Shadow(5, 1.0)])
    t = table(policy, production=1, explicit=(2,))
    rng = random.Random(0)
    assert t.serving_set == {1, 2, 3, 4, 5}
    for version in (1, 2, 3, 4, 5):
        route = resolve(t, pinned_version=str(version), rng=rng)
        assert (route.version, route.handle) == (version, f"handle-{version}")
        assert (route.arm, route.experiment_id, route.shadows) == (PINNED_ARM, "", ())
    assert resolve(t, pinned_version="4", routing_key="k", rng=rng).routing_key_hash
    for outside in ("6", "0", "abc", "03"):
        with pytest.raises(VersionNotFound, match=f"'{outside}'"):
            resolve(t, pinned_version=outside, rng=rng)


def test_explicit_loads_without_a_handle_are_left_out() -> None:
    t = build_table("fraud", None, production=1, handles={1: "h1"}, explicit=(2,))
    assert t.serving_set == {1}


def test_versions_of_the_policy_must_be_loaded_first() -> None:
    policy = Policy.split({3: 50, 4: 50}, shadows=[Shadow(5, 0.1)])
    with pytest.raises(NotReady, match=r"\[4, 5\]"):
        build_table("fraud", policy, production=1, handles={1: "h1", 3: "h3"})


def test_a_model_with_nothing_ready_is_not_ready_but_pins_still_work() -> None:
    t = build_table("fraud", None, production=None, handles=HANDLES, explicit=(2,))
    rng = random.Random(0)
    with pytest.raises(NotReady):
        resolve(t, rng=rng)
    assert resolve(t, pinned_version="2", rng=rng).version == 2


def test_shadow_fractions_hold_and_a_shadow_is_never_the_primary() -> None:
    t = table(Policy.split({3: 70, 4: 30}, shadows=[Shadow(5, 0.2), Shadow(2, 0.5)]))
    rng = random.Random(11)
    primaries: Counter[int] = Counter()
    mirrored: Counter[int] = Counter()
    for _ in range(20_000):
        route = resolve(t, rng=rng)
        primaries[route.version] += 1
        mirrored.update(s.version for s in route.shadows)
        assert route.version not in {s.version for s in route.shadows}
    assert set(primaries) == {3, 4}
    assert abs(mirrored[5] / 20_000 - 0.2) <= 0.01
    assert abs(mirrored[2] / 20_000 - 0.5) <= 0.01


def test_sticky_shadows_follow_the_key_independently_of_the_arm() -> None:
    t = table(Policy.split({3: 50, 4: 50}, sticky=True, shadows=[Shadow(5, 0.3)],
                           experiment_id="exp-shadow"))
    rng = random.Random(0)
    keys = [f"user-{i}" for i in range(2000)]
    first = {k: resolve(t, routing_key=k, rng=rng) for k in keys}
    again = {k: resolve(t, routing_key=k, rng=rng) for k in keys}
    assert all(first[k].shadows == again[k].shadows for k in keys)
    shadowed = [k for k in keys if first[k].shadows]
    assert abs(len(shadowed) / len(keys) - 0.3) <= 0.04
    # Independent of the primary draw: both arms contribute shadow copies.
    assert {first[k].version for k in shadowed} == {3, 4}


def test_after_50_50_becomes_0_100_every_request_goes_to_the_new_arm() -> None:
    rng = random.Random(9)
    before = table(Policy.split({3: 50, 4: 50}))
    assert Counter(resolve(before, rng=rng).version for _ in range(2000)).keys() == {3, 4}
    after = table(Policy.split({3: 0, 4: 100}))
    seen = Counter(resolve(after, rng=rng).version for _ in range(20_000))
    assert seen == Counter({4: 20_000})
    # Version 3 stays pinnable while the policy names it.
    assert resolve(after, pinned_version="3", rng=rng).version == 3


def test_routing_key_extraction() -> None:
    assert extract_routing_key({"routing_key": "a"}, "b") == "a"
    assert extract_routing_key({}, "b") == "b"
    assert extract_routing_key({"routing_key": ""}, None) is None
    assert extract_routing_key({}, None) is None
    with pytest.raises(InvalidInput, match="must be a string, got int"):
        extract_routing_key({"routing_key": 7})
    with pytest.raises(InvalidInput, match="at most 256"):
        extract_routing_key({"routing_key": "x" * 257})


def test_unit_maps_into_the_half_open_interval() -> None:
    assert unit(b"\x00" * 8) == 0.0
    assert unit(b"\xff" * 8) < 1.0
